"""``import varprop`` is lazy (PEP 562): it loads none of the heavy dependencies until a name
that needs them is used, and every public name still resolves. Deterministic: each check
runs in a fresh interpreter and looks at ``sys.modules``, never at a clock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("flax", "scipy", "matplotlib", "sklearn", "optax")


def loaded_after(code: str) -> list[str]:
    """The HEAVY top-level packages in ``sys.modules`` after running ``code`` fresh."""
    script = (
        f"import sys, json\n{code}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.splitlines()[-1])


def test_loaded_after_sees_what_it_should():
    # The probe can fail: importing scipy directly shows up.
    assert loaded_after("import scipy.stats") == ["scipy"]


@pytest.mark.parametrize(
    "code",
    [
        "import varprop",
        "import varprop.laws, varprop.nn",
        "from varprop import laws, nn; dir(laws); dir(nn)",
        "import varprop; dir(varprop); varprop.__version__",
        "import varprop.initializers",
        "from varprop import laws; laws.Scheme; laws.symbols",
    ],
)
def test_import_loads_no_heavy_dependency(code):
    assert loaded_after(code) == []


def test_import_does_not_touch_jax_config():
    assert (
        loaded_after("import varprop, jax; assert jax.config.jax_compilation_cache_dir is None")
        == []
    )


def test_names_resolve_on_first_use():
    import varprop
    from varprop import check, enable_compilation_cache, initializers, laws, nn

    assert check is varprop.check and check.__name__ == "check"
    assert callable(enable_compilation_cache) and callable(initializers.he_normal)
    assert laws.layer_factors(initializers.he_normal().scheme, "relu").forward == 1
    assert nn.MLP.__name__ == "MLP" and nn.linen.BatchNorm.__name__ == "BatchNorm"
    for mod in (varprop, laws, nn):
        assert set(mod.__all__) <= set(dir(mod))
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (mod.__name__, name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        varprop.nope  # noqa: B018
    with pytest.raises(AttributeError, match=r"varprop\.laws' has no attribute 'nope'"):
        laws.nope  # noqa: B018


def test_star_import():
    ns: dict[str, object] = {}
    exec("from varprop.nn import *", ns)
    assert "MLP" in ns and "batch_norm" in ns
