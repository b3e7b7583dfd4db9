"""The distribution a scheme draws from is a record declared once, not a string compared
in many places: its properties answer what the laws, the samplers and the checker ask, and
it prints, compares and serialises as its name (users see no change)."""

import json
import pathlib
import pickle
import re

import pytest
import sympy as sp

import varprop
from varprop import initializers as I
from varprop._src.laws import schemes as Sc
from varprop._src.laws import symbols as S

#: name -> (iid, is_constant, is_orthogonal, is_delta)
EXPECTED = {
    "normal": (True, False, False, False),
    "truncated_normal": (True, False, False, False),
    "uniform": (True, False, False, False),
    "orthogonal": (False, False, True, False),
    "delta_orthogonal": (False, False, True, True),
    "constant": (False, True, False, False),
}


def test_declared_records_and_their_properties():
    assert set(Sc.ALL_DISTRIBUTIONS) == set(EXPECTED)
    assert Sc.DISTRIBUTIONS == ("normal", "truncated_normal", "uniform")  # as before
    for name, flags in EXPECTED.items():
        d = Sc.distribution_named(name)
        assert (d.iid, d.is_constant, d.is_orthogonal, d.is_delta) == flags, name
        assert d.name == name and str(d) == name and repr(d) == repr(name)


@pytest.mark.parametrize(
    ("init", "name"),
    [
        (I.he_normal(), "normal"),
        (I.glorot_uniform(), "uniform"),
        (I.truncated_normal(0.1), "truncated_normal"),
        (I.orthogonal(), "orthogonal"),
        (I.delta_orthogonal(), "delta_orthogonal"),
        (I.zeros, "constant"),
        (I.constant(0.5), "constant"),
        (I.variance_scaling(2.0, "fan_in", "uniform"), "uniform"),
    ],
)
def test_every_scheme_holds_the_declared_record(init, name):
    d = init.scheme.distribution
    assert isinstance(d, Sc.Distribution)
    assert d is Sc.distribution_named(name)
    # What users see is unchanged: the name in text, equality with the name, JSON of str().
    assert d == name and name == d and d != "something else"
    assert f"{d}" == name and f", {name})" in repr(init.scheme)
    assert f"({name})" in init.scheme.summary()
    assert json.loads(json.dumps({"distribution": str(d)})) == {"distribution": name}


def test_scheme_accepts_a_name_or_a_record_and_rejects_unknown_names():
    law = S.gain**2 / S.fan_in
    by_name = Sc.Scheme("x", law, {S.gain: sp.Integer(1)}, "uniform", "")  # type: ignore[arg-type]
    by_record = Sc.Scheme("x", law, {S.gain: sp.Integer(1)}, Sc.UNIFORM, "")
    assert by_name.distribution is by_record.distribution is Sc.UNIFORM
    with pytest.raises(ValueError, match="unknown distribution 'laplace'; allowed"):
        Sc.Scheme("x", law, {S.gain: sp.Integer(1)}, "laplace", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed: \\('normal', 'truncated_normal', 'uniform'\\)"):
        I.variance_scaling(1.0, "fan_in", "orthogonal")


def test_records_survive_pickling_as_the_declared_ones():
    d = pickle.loads(pickle.dumps(Sc.DELTA_ORTHOGONAL))
    assert d is Sc.DELTA_ORTHOGONAL
    assert {Sc.NORMAL: 1}["normal"] == 1  # hash of the record = hash of its name


def test_kurtosis_from_the_record_or_its_name():
    assert Sc.distribution_kurtosis(Sc.NORMAL) == Sc.distribution_kurtosis("normal") == 3
    assert Sc.distribution_kurtosis(Sc.UNIFORM) == sp.Rational(9, 5)
    assert I.orthogonal().scheme.kurtosis is None and I.zeros.scheme.kurtosis is None
    with pytest.raises(ValueError, match="kurtosis is defined for"):
        Sc.distribution_kurtosis(Sc.CONSTANT)


def test_orthogonal_matrix_shape_from_the_record():
    assert Sc.orthogonal_matrix_shape((3, 3, 4, 8), -1, Sc.DELTA_ORTHOGONAL) == (4, 8)
    assert Sc.orthogonal_matrix_shape((3, 3, 4, 8), -1, "delta_orthogonal") == (4, 8)
    assert Sc.orthogonal_matrix_shape((6, 4)) == (6, 4)


def test_no_distribution_is_compared_as_a_string_in_the_package():
    # The properties of the record decide; a comparison with a literal name would bypass
    # them (and still pass, since a record equals its name).
    root = pathlib.Path(varprop.__file__).parent
    pattern = re.compile(r"distribution\s*(?:==|!=|\bin\b|\bnot in\b)\s*[\"'(]")
    hits = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith((">>>", "#"))
    ]
    assert not hits, hits
