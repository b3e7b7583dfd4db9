"""The CLI's contract: findings exit 0/1/3/4; every failure that is not a finding exits 2 with
one line on stderr naming the bad value and what is allowed (``{"error", "kind"}`` on stdout
under ``--json``), never a traceback and never exit 1."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varprop._src import cli
from varprop._src.cli import main
from varprop._src.errors import InputError

SMALL = ["--widths", "8,8,4", "--max-seeds", "4", "--no-cache"]


def _gz(data: bytes) -> bytes:
    """gzip with a fixed header time: the same bytes in every process, so parametrized test
    ids built from them agree between pytest-xdist workers."""
    return gzip.compress(data, mtime=0)


def run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_refused(capsys, argv, match, kind="usage"):
    """Exit 2, one stderr line containing ``match``; under --json a JSON error on stdout."""
    code, out, err = run(capsys, argv)
    assert code == 2, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert lines[0].startswith("varprop") and "Traceback" not in err
    code, out, err = run(capsys, [*argv, "--json"])
    assert code == 2
    obj = json.loads(out)
    assert obj["kind"] == kind and match in obj["error"], obj
    assert "\n" not in obj["error"]


# -- values that were accepted or crashed before -----------------------------------------------


@pytest.mark.parametrize("widths", ["8,²,4", "8,٣,4", "8,8x²,4", "８,8,4", "8,8x٣,4"])
def test_non_ascii_digits_in_widths(capsys, widths):
    bad = next(p for p in widths.split(",") if not p.replace("x", "").isascii())
    assert_refused(capsys, ["check", "--widths", widths], f"bad entry {bad!r}")


@pytest.mark.parametrize("opt", ["--batch", "--seeds", "--max-seeds", "--seed"])
@pytest.mark.parametrize("value", ["١٢٨", "１２８", "²"])
def test_non_ascii_digits_in_whole_numbers(capsys, opt, value):
    assert_refused(capsys, ["check", opt, value], f"got {value!r}")


def test_non_ascii_digits_in_derive_fans(capsys):
    assert_refused(capsys, ["derive", "--fan-in", "٣"], "got '٣'")


@pytest.mark.parametrize("seed", [str(2**64), str(2**32), "-1", str(-(2**63) - 1)])
def test_seed_out_of_range(capsys, seed):
    assert_refused(
        capsys, ["check", "--seed", seed], f"--seed: expected 0 to 4294967295, got {seed}"
    )


@pytest.mark.parametrize(
    ("argv", "match", "kind"),
    [
        # Shapes are int32 in XLA: a batch beyond it is refused as a value, not measured.
        (
            ["--batch", str(10**30)],
            f"batch must be a whole number in [2, 2147483647], got {10**30}",
            "usage",
        ),
        (["--widths", f"8,{2**31 - 1},4"], "GiB available", "resources"),
        (["--widths", "8,1024x1000,4", "--batch", "100000"], "GiB available", "resources"),
    ],
)
def test_runs_that_cannot_fit_in_memory(capsys, argv, match, kind):
    assert_refused(capsys, ["check", *argv], match, kind=kind)


def test_absurd_depth_is_refused_before_building_the_list(capsys):
    assert_refused(
        capsys, ["check", "--widths", "8,8x10000000000,4"], "at most 100000 layers, got 10000000001"
    )


@pytest.mark.parametrize(
    ("tol", "match"),
    [
        ("1.5", "--tolerance must be a number t with 0 < t <= 1"),
        ("0", "got 0.0"),
        ("-0.1", "got -0.1"),
        ("nan", "got nan"),
        ("inf", "got inf"),
        ("abc", "argument --tolerance: expected a number, got 'abc'"),
    ],
)
def test_tolerance_outside_0_1(capsys, tol, match):
    assert_refused(capsys, ["check", "--tolerance", tol], match)


def test_tolerance_1_is_allowed(capsys, patch_check):
    patch_check(fake_check(FakeResult((0, 0))))
    assert run(capsys, ["check", *SMALL, "--tolerance", "1"])[0] == 0


def test_data_dir_without_mnist(capsys, tmp_path):
    assert_refused(
        capsys, ["check", "--data-dir", str(tmp_path)], "--data-dir is only read with --data mnist"
    )


def test_max_seeds_below_seeds(capsys):
    assert_refused(
        capsys,
        ["check", "--seeds", "8", "--max-seeds", "4"],
        "--max-seeds must be a whole number in [8,",
    )


def _mnist_dir(tmp_path: Path, images: bytes) -> Path:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(_gz(b"\x00\x00\x08\x01\0\0\0\0"))
    return tmp_path


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (_gz(b"\x00\x00\x08\x03" + b"\x00" * 12)[:-10], "truncated gzip file"),
        (b"not gzip at all", "not a valid gzip file"),
        (b"", "is empty"),
        (_gz(b"\x12\x34\x08\x03"), "is not an IDX file"),
        (_gz(b"\x00\x00\x08\x03\x00"), "is truncated"),
    ],
)
def test_corrupt_mnist(capsys, tmp_path, content, match):
    d = _mnist_dir(tmp_path, content)
    name = str(d / "t10k-images-idx3-ubyte.gz")
    assert_refused(
        capsys,
        ["check", "--data", "mnist", "--data-dir", str(d), "--widths", "784,8,4"],
        match,
        kind="data",
    )
    code, _, err = run(capsys, ["check", "--data", "mnist", "--data-dir", str(d)])
    assert code == 2 and name in err


def test_mnist_missing_directory(capsys, tmp_path):
    assert_refused(
        capsys,
        ["check", "--data", "mnist", "--data-dir", str(tmp_path / "x")],
        "does not exist",
        "data",
    )


# -- argparse's own errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["check", "--bogus"], "unrecognized arguments: --bogus"),
        (["check", "--batch", "abc"], "--batch: expected a whole number >= 1, got 'abc'"),
        (["check", "--data", "foo"], "invalid choice: 'foo'"),
        (["check", "--widths"], "expected one argument"),
        (["nope"], "invalid choice: 'nope'"),
        (["derive", "--format", "pdf"], "invalid choice: 'pdf'"),
    ],
)
def test_argparse_errors_are_one_line(capsys, argv, match):
    assert_refused(capsys, argv, match)


def test_json_anywhere(capsys):
    for argv in (["--json", "check", "--bogus"], ["check", "--json", "--bogus"]):
        code, out, _ = run(capsys, argv)
        assert code == 2
        assert json.loads(out) == {
            "error": "unrecognized arguments: --bogus",
            "kind": "usage",
        }


# -- derive: numerics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["--init", "normal:stddev=1e-300"], ["--act", "leaky_relu:negative_slope=1e308"]],
)
def test_derive_extreme_values_do_not_trace(capsys, argv):
    code, out, err = run(capsys, ["derive", *argv])
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.splitlines()) == 1
    else:
        assert "Derivation" in out


@pytest.mark.parametrize(
    "exc",
    [
        OverflowError(34, "Numerical result out of range"),
        ZeroDivisionError("float division by zero"),
    ],
)
def test_derive_numeric_errors_exit_2(capsys, monkeypatch, exc):
    from varprop._src.laws import derivation

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(derivation, "derive", boom)
    assert_refused(capsys, ["derive", "--act", "tanh"], str(exc), kind="numerics")


def test_derive_value_errors_are_usage(capsys, monkeypatch):
    from varprop._src.laws import derivation

    def boom(*a, **k):
        raise ValueError("fan_out needs fan_in")

    monkeypatch.setattr(derivation, "derive", boom)
    assert_refused(capsys, ["derive", "--act", "tanh"], "fan_out needs fan_in", kind="usage")


# -- check: exit codes, InputError from check(), bugs, progress ------------------------------


class FakeResult:
    def __init__(self, codes):
        self.codes = codes  # exit code without / with require_healthy
        self.verdict = "agrees"

    def exit_code(self, require_healthy: bool = False) -> int:
        return self.codes[require_healthy]

    def summary(self) -> str:
        return "Law: agrees (fake)."

    def to_json(self) -> str:
        return json.dumps({"verdict": self.verdict})


def fake_check(result=None, exc=None, messages=()):
    def check(widths, activation, init, *, progress=None, **kw):
        for m in messages:
            if progress is not None:
                progress(m)
        if exc is not None:
            raise exc
        return result

    return check


@pytest.fixture
def patch_check(monkeypatch):
    from varprop._src import check as C

    def patch(fn):
        monkeypatch.setattr(C, "check", fn)

    return patch


@pytest.mark.parametrize(
    ("codes", "flags", "expected"),
    [
        ((0, 0), [], 0),
        ((0, 4), [], 0),
        ((0, 4), ["--require-healthy"], 4),
        ((4, 4), [], 4),
        ((1, 1), [], 1),
        ((3, 3), ["--require-healthy"], 3),
    ],
)
def test_check_exit_code_comes_from_the_result(capsys, patch_check, codes, flags, expected):
    patch_check(fake_check(FakeResult(codes)))
    code, out, err = run(capsys, ["check", *SMALL, *flags])
    assert code == expected and out.strip() == "Law: agrees (fake)." and err == ""


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (
            InputError("the run needs 3.2 TiB, more than the 23 GiB free", kind="resources"),
            "resources",
        ),
        (InputError("seed 5 is out of range", kind="usage"), "usage"),
        (ValueError("every width must be an int >= 1, got 0"), "usage"),
        (MemoryError("Unable to allocate 3.2 TiB"), "resources"),
    ],
)
def test_check_input_errors_exit_2(capsys, patch_check, exc, kind):
    patch_check(fake_check(exc=exc))
    assert_refused(capsys, ["check", *SMALL], str(exc), kind=kind)


def test_internal_errors_exit_2_with_one_line(capsys, patch_check):
    patch_check(fake_check(exc=RuntimeError("boom\nsecond line")))
    code, out, err = run(capsys, ["check", *SMALL])
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "varprop check: internal error: RuntimeError: boom second line "
        "(rerun with --debug for the traceback)"
    ]
    code, out, _ = run(capsys, ["check", *SMALL, "--json"])
    assert code == 2
    assert json.loads(out)["kind"] == "internal"
    with pytest.raises(RuntimeError, match="boom"):
        main(["check", *SMALL, "--debug"])


def test_keyboard_interrupt_is_not_a_traceback(capsys, patch_check):
    patch_check(fake_check(exc=KeyboardInterrupt()))
    code, _, err = run(capsys, ["check", *SMALL])
    assert code == 130 and err.splitlines() == ["varprop check: interrupted"]


def test_progress_goes_to_stderr_one_line_each(capsys, patch_check):
    patch_check(fake_check(FakeResult((0, 0)), messages=["round 1: 4 seeds", "round 2: 8 seeds"]))
    code, out, err = run(capsys, ["check", *SMALL])
    assert code == 0 and out.strip() == "Law: agrees (fake)."
    assert err.splitlines() == [
        "varprop check: round 1: 4 seeds",
        "varprop check: round 2: 8 seeds",
    ]
    code, out, err = run(capsys, ["check", *SMALL, "--quiet", "--json"])
    assert code == 0 and json.loads(out) == {"verdict": "agrees"} and err == ""


def test_progress_only_passed_when_check_accepts_it(capsys, patch_check):
    seen = {}

    def old_check(widths, activation, init, **kw):
        seen.update(kw)
        return FakeResult((0, 0))

    patch_check(old_check)
    assert run(capsys, ["check", *SMALL])[0] == 0
    assert "progress" not in seen and seen["max_seeds"] == 4


def test_unwritable_cache_dir_warns_and_continues(capsys, patch_check, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("VARPROP_CACHE_DIR", str(blocker / "jax"))
    patch_check(fake_check(FakeResult((0, 0))))
    code, out, err = run(capsys, ["check", "--widths", "8,8,4", "--max-seeds", "4"])
    assert code == 0 and out.strip() == "Law: agrees (fake)."
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("varprop check: warning: ")
    assert str(blocker / "jax") in lines[0] and "without it" in lines[0]


def test_cache_is_on_during_the_run_and_restored_after(capsys, patch_check, monkeypatch, tmp_path):
    import jax

    monkeypatch.delenv("VARPROP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = jax.config.jax_compilation_cache_dir
    assert before is None
    seen = []

    def check(*a, **k):
        seen.append(jax.config.jax_compilation_cache_dir)
        return FakeResult((0, 0))

    patch_check(check)
    assert run(capsys, ["check", "--widths", "8,8,4", "--max-seeds", "4"])[0] == 0
    assert seen == [str(tmp_path / "varprop" / "jax")]
    assert jax.config.jax_compilation_cache_dir is None
    assert run(capsys, ["check", *SMALL])[0] == 0  # --no-cache
    assert seen[-1] is None


def test_enable_compilation_cache_refuses_unwritable_dir(tmp_path):
    import varprop

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot use") as e:
        varprop.enable_compilation_cache(blocker / "jax")
    assert e.value.kind == "io"


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("VARPROP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.default_cache_dir() == tmp_path / "varprop" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cli.default_cache_dir() == Path.home() / ".cache" / "varprop" / "jax"
    monkeypatch.setenv("VARPROP_CACHE_DIR", str(tmp_path / "c"))
    assert cli.default_cache_dir() == tmp_path / "c"


# -- real runs ---------------------------------------------------------------------------------------


def test_small_real_check(capsys):
    code, out, err = run(capsys, ["check", *SMALL, "--json"])
    assert code in (0, 3), err
    assert json.loads(out)["verdict"] in ("agrees", "inconclusive")


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VARPROP_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "varprop", "check", "--widths", "8,8,4", "--max-seeds", "4", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_persistent_cache_is_written(tmp_path):
    r = _cli(tmp_path, "--quiet")
    assert r.returncode in (0, 3), r.stderr
    entries = list((tmp_path / "varprop" / "jax").iterdir())
    assert entries, "no compilation-cache entries written"
    assert r.stderr == ""


def test_no_cache_writes_nothing(tmp_path):
    r = _cli(tmp_path, "--quiet", "--no-cache")
    assert r.returncode in (0, 3), r.stderr
    d = tmp_path / "varprop" / "jax"
    assert not d.exists() or not any(d.iterdir())
