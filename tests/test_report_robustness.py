"""``varprop report`` / ``experiment`` when things go wrong: bad --out or data found before the
first experiment runs, a failing experiment reported but not fatal, failed claims marked and
exit 1, and the report replaced atomically (never a mix of two runs, never a user's file lost).

Small fake experiments are registered for these tests; no real experiment runs here.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest

from varprop._src import report as R
from varprop._src.cli import main
from varprop._src.errors import InputError
from varprop._src.experiments import base
from varprop._src.experiments.base import Claim, Experiment, ExperimentResult, Figure

PNG = b"\x89PNG\r\n\x1a\nfake"
MNIST_DIR = Path("/work/shared/data/mnist")


class Fakes:
    """Registers fake experiments; ``calls`` lists the names run, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.calls: list[str] = []
        base.registry()  # load the real ones first
        self._order = 1000

    def add(
        self,
        name: str,
        *,
        claims: tuple[tuple[str, bool], ...] = (("fake claim holds", True),),
        figures: tuple[str, ...] = ("a",),
        raises: BaseException | None = None,
    ) -> str:
        def fn(cfg: base.RunConfig) -> ExperimentResult:
            self.calls.append(name)
            if raises is not None:
                raise raises
            return ExperimentResult(
                name,
                f"Fake {name}",
                f"summary of {name}",
                claims=[Claim(s, h, f"evidence for {s}") for s, h in claims],
                figures=[Figure(f, f"caption {f}", PNG + f.encode()) for f in figures],
            )

        self._order += 1
        exp = Experiment(name, f"Fake {name}", self._order, fn)
        self.monkeypatch.setitem(base._REGISTRY, name, exp)
        return name


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.delenv("VARPROP_MNIST_DIR", raising=False)
    return Fakes(monkeypatch)


def report(out: Path, *names: str, extra: tuple[str, ...] = ()) -> int:
    return main(["report", "--out", str(out), "--only", ",".join(names), "--no-progress", *extra])


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ checks before the first run


def test_out_that_is_a_file_is_refused_before_any_experiment(fakes, tmp_path, capsys):
    name = fakes.add("fake_ok")
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert report(f, name) == 2
    line = _err_line(capsys)
    assert repr(str(f)) in line and "is not a directory" in line
    assert fakes.calls == []
    assert f.read_text() == "x"


def test_out_under_a_file_is_refused(fakes, tmp_path, capsys):
    name = fakes.add("fake_ok")
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert report(f / "sub" / "out", name) == 2
    line = _err_line(capsys)
    assert "cannot be created" in line and repr(str(f)) in line
    assert fakes.calls == []
    with pytest.raises(InputError) as ei:
        R.check_out_dir(f / "sub")
    assert ei.value.kind == "io"


def test_read_only_out_is_refused(fakes, tmp_path, capsys):
    name = fakes.add("fake_ok")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user (e.g. root) whom chmod 0o500 does not stop writing")
        assert report(ro, name) == 2
        assert "is not writable" in _err_line(capsys)
        assert report(ro / "new", name) == 2
        assert "cannot be created" in _err_line(capsys)
        assert fakes.calls == []
    finally:
        ro.chmod(0o700)


def test_out_is_created_when_missing(fakes, tmp_path):
    name = fakes.add("fake_ok")
    out = tmp_path / "a" / "b"
    assert report(out, name) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == ["fake_ok-a.png"]


def test_out_with_a_user_figures_dir_is_refused_and_left_alone(fakes, tmp_path, capsys):
    name = fakes.add("fake_ok")
    (tmp_path / "figures").mkdir()
    mine = tmp_path / "figures" / "my-plot.jpg"
    mine.write_bytes(b"mine")
    assert report(tmp_path, name) == 2
    assert "figures/ that varprop did not write" in _err_line(capsys)
    assert fakes.calls == []
    assert mine.read_bytes() == b"mine"


def test_figures_of_a_report_written_before_the_marker_are_replaced(fakes, tmp_path):
    """docs/report/figures was written without the marker: <experiment>-<name>.png only."""
    name = fakes.add("fake_ok")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "zeros-old.png").write_bytes(PNG)
    assert report(tmp_path, name) == 0
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["fake_ok-a.png"]


@pytest.mark.parametrize("content", ["empty", "corrupt"])
def test_bad_data_dir_is_refused_before_any_experiment(fakes, tmp_path, capsys, content):
    name = fakes.add("fake_ok")
    d = tmp_path / "mnist"
    d.mkdir()
    if content == "corrupt":
        for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            with gzip.open(d / f"{stem}.gz", "wb") as fh:
                fh.write(b"not an idx file")
    out = tmp_path / "out"
    assert report(out, name, extra=("--data-dir", str(d))) == 2
    line = _err_line(capsys)
    assert f"--data-dir {str(d)!r}" in line
    assert ("no MNIST IDX files" if content == "empty" else "not an IDX file") in line
    assert fakes.calls == []
    assert not out.exists()


def test_bad_data_dir_from_the_environment_is_refused(fakes, tmp_path, capsys, monkeypatch):
    name = fakes.add("fake_ok")
    monkeypatch.setenv("VARPROP_MNIST_DIR", str(tmp_path / "nope"))
    assert main(["experiment", name, "--no-progress"]) == 2
    line = _err_line(capsys)
    assert "$VARPROP_MNIST_DIR=" in line and "is not a directory" in line
    assert fakes.calls == []


def test_data_without_a_directory_is_the_documented_fallback(fakes):
    assert "digits" in R.check_data(None)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST test files not at {MNIST_DIR}")
def test_mnist_data_dir_is_read():
    assert R.check_data(str(MNIST_DIR)).startswith("MNIST: 10,000")


@pytest.mark.parametrize("only", [",", " , ,", ""])
def test_only_naming_no_experiment_is_refused(fakes, tmp_path, capsys, only):
    assert main(["report", "--out", str(tmp_path), "--only", only]) == 2
    line = _err_line(capsys)
    assert f"--only {only!r} names no experiment" in line
    assert "zeros, constant" in line  # the allowed names
    assert fakes.calls == [] and not (tmp_path / "report.html").exists()


# -------------------------------------------------------------- failing experiments and claims


def test_failing_experiment_is_reported_and_not_fatal(fakes, tmp_path, capsys):
    bad = fakes.add("fake_raises", raises=RuntimeError("boom: the\nmessage"))
    ok = fakes.add("fake_ok")
    assert report(tmp_path, bad, ok) == 3  # inconclusive, not a finding
    assert fakes.calls == [bad, ok]
    cap = capsys.readouterr()
    assert "Fake fake_raises: could not run" in cap.out
    assert "inconclusive" in cap.out.splitlines()[-1]
    assert "RuntimeError: boom" in cap.err  # the traceback, for whoever debugs it
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    sect = md.split("## Fake fake_raises")[1].split("## Fake fake_ok")[0]
    assert "could not run: RuntimeError: boom: the message (at test_report_robustness.py:" in sect
    assert "It made no claims." in sect and "✅" not in sect and "❌" not in sect
    assert "| 0/0 | ⚠️ could not run |" in md
    assert "1 experiment could not run (fake_raises): inconclusive." in md
    hsect = page.split('id="fake-fake-raises"')[1].split('id="fake-fake-ok"')[0]
    assert "RuntimeError: boom: the message" in hsect and "<li>" not in hsect
    assert '<span class="warn">could not run</span>' in page
    # the other experiment is there, whole
    assert "- ✅ fake claim holds — evidence for fake claim holds" in md
    assert (tmp_path / "figures" / "fake_ok-a.png").read_bytes() == PNG + b"a"


def test_failing_experiment_with_the_experiment_command_exits_3(fakes, capsys):
    bad = fakes.add("fake_raises", raises=ZeroDivisionError("division by zero"))
    assert main(["experiment", bad, "--no-progress"]) == 3
    assert "error: ZeroDivisionError: division by zero" in capsys.readouterr().out


def test_keyboard_interrupt_is_not_swallowed(fakes, tmp_path, capsys):
    """Ctrl-C stops the run (the CLI says "interrupted", exit 130); it is not recorded as an
    experiment that could not run, and no report is written."""
    bad = fakes.add("fake_interrupted", raises=KeyboardInterrupt())
    after = fakes.add("fake_ok")
    with pytest.raises(KeyboardInterrupt):
        R.run_report([bad, after], progress=False)
    try:
        code = report(tmp_path, bad, after)
    except KeyboardInterrupt:
        code = None
    assert code not in (0, 1, 3)
    assert fakes.calls == [bad, bad]
    assert "could not run" not in capsys.readouterr().out
    assert not (tmp_path / "report.html").exists()


def test_failed_claim_is_marked_and_exits_1(fakes, tmp_path, capsys):
    """A report that marks a failed claim as held, or exits 0, fails here."""
    ok = fakes.add("fake_ok")
    bad = fakes.add("fake_bad", claims=(("first claim holds", True), ("second claim fails", False)))
    rep = R.run_report([ok, bad], progress=False)
    assert not rep.held and rep.exit_code == 1 and rep.n_failed_claims == 1
    assert not rep.results[1].held
    md = R.render_markdown(rep)
    assert "- ❌ second claim fails — evidence for second claim fails" in md
    assert "- ✅ first claim holds" in md
    assert "- ✅ second claim fails" not in md
    assert re.search(r"\| 1/2 \| ❌ failed \|", md)
    assert "2 of 3 claims held." in md
    page = R.render_html(rep)
    assert '<span class="bad">✘ failed</span>: second claim fails' in page
    assert '<span class="ok">✔ held</span>: first claim holds' in page
    assert '<td>1/2</td><td><span class="bad">failed</span>' in page
    assert "did NOT hold" in R.summary_text(rep.results[1])
    # and the command exits 1 (a finding), also when another experiment could not run
    assert report(tmp_path, ok, bad) == 1
    assert "1 of 3 claims did NOT hold (fake_bad)" in capsys.readouterr().out
    crash = fakes.add("fake_raises", raises=RuntimeError("boom"))
    assert report(tmp_path, ok, bad, crash) == 1


def test_exit_codes():
    ok = ExperimentResult("a", "A", "", claims=[Claim("s", True, "e")])
    bad = ExperimentResult("b", "B", "", claims=[Claim("s", False, "e")])
    crashed = ExperimentResult("c", "C", "", error="RuntimeError: boom")
    silent = ExperimentResult("d", "D", "")  # ran, made no claim

    def code(*rs):
        return R.Report(list(rs), True, 0, 0.0).exit_code

    assert code(ok) == 0 and R.Report([ok], True, 0, 0.0).held
    assert code(ok, bad) == 1 and code(bad, crashed) == 1
    assert code(ok, crashed) == 3 and code(ok, silent) == 3 and code() == 3
    assert not R.Report([ok, crashed], True, 0, 0.0).held


# ------------------------------------------------------------------------- writing the report


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_second_run_replaces_figures_and_keeps_unrelated_files(fakes, tmp_path):
    first = fakes.add("fake_first", figures=("a", "b"))
    second = fakes.add("fake_second", figures=("c",))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2")
    assert report(tmp_path, first) == 0
    assert sorted(os.listdir(tmp_path / "figures")) == [
        R.FIGURES_MARKER,
        "fake_first-a.png",
        "fake_first-b.png",
    ]
    assert report(tmp_path, second) == 0
    # exactly this run's figures; the earlier run's are gone
    assert sorted(os.listdir(tmp_path / "figures")) == [R.FIGURES_MARKER, "fake_second-c.png"]
    assert sorted(os.listdir(tmp_path)) == [
        "data",
        "figures",
        "notes.txt",
        "report.html",
        "report.md",
    ]  # no staging directory left behind
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "data" / "x.csv").read_text() == "1,2"
    assert "Fake fake_second" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Fake fake_first" not in (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("fn", ["render_html", "render_markdown"])
def test_crash_while_rendering_leaves_the_previous_report(fakes, tmp_path, monkeypatch, fn):
    first = fakes.add("fake_first", figures=("a", "b"))
    second = fakes.add("fake_second", figures=("c",))
    (tmp_path / "notes.txt").write_text("mine")
    assert report(tmp_path, first) == 0
    before = _snapshot(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("simulated crash while rendering")

    monkeypatch.setattr(R, fn, boom)
    try:
        code = report(tmp_path, second)  # the CLI reports an internal error: exit 2
    except RuntimeError as e:
        assert "simulated crash" in str(e)
        code = None
    assert code != 0
    assert _snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["figures", "notes.txt", "report.html", "report.md"]


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5, 6])
def test_crash_while_moving_into_place_restores_the_previous_report(
    fakes, tmp_path, monkeypatch, capsys, fail_at
):
    """The n-th rename fails (disk error, ...): every earlier one is undone."""
    first = fakes.add("fake_first", figures=("a", "b"))
    second = fakes.add("fake_second", figures=("c",))
    (tmp_path / "notes.txt").write_text("mine")
    assert report(tmp_path, first) == 0
    before = _snapshot(tmp_path)
    real_replace = os.replace
    n = {"calls": 0}

    def flaky(src, dst):
        n["calls"] += 1
        if n["calls"] == fail_at:
            raise OSError(28, "No space left on device (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(R.os, "replace", flaky)
    capsys.readouterr()
    assert report(tmp_path, second) == 2
    line = _err_line(capsys)
    assert "writing the report failed, the previous one is kept" in line
    assert "No space left on device (simulated)" in line
    monkeypatch.setattr(R.os, "replace", real_replace)
    assert _snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["figures", "notes.txt", "report.html", "report.md"]


def test_unwritable_out_is_refused_whoever_runs_the_tests(fakes, tmp_path, monkeypatch, capsys):
    """The check itself, with os.access saying "no" (chmod cannot stop root)."""
    name = fakes.add("fake_ok")
    monkeypatch.setattr(R.os, "access", lambda path, mode: False)
    assert report(tmp_path, name) == 2
    assert f"--out {str(tmp_path)!r} is not writable" in _err_line(capsys)
    assert report(tmp_path / "new" / "dir", name) == 2
    assert f"cannot be created: {str(tmp_path)!r} is not writable" in _err_line(capsys)
    assert fakes.calls == []


def test_out_dot_keeps_everything_else(fakes, tmp_path, monkeypatch):
    """``--out .`` in a directory of the user's: only report.html, report.md, figures/."""
    name = fakes.add("fake_ok")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("mine")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1")
    (tmp_path / ".hidden").write_text("h")
    for _ in range(2):
        assert report(Path("."), name) == 0
    assert sorted(os.listdir(tmp_path)) == [
        ".hidden",
        "README.md",
        "figures",
        "report.html",
        "report.md",
        "src",
    ]
    assert (tmp_path / "README.md").read_text() == "mine"
    assert (tmp_path / "src" / "a.py").read_text() == "x = 1"


@pytest.mark.parametrize(
    "argv, kind",
    [
        (["--out", "__FILE__"], "io"),
        (["--out", "__TMP__", "--data-dir", "__TMP__"], "data"),
        (["--out", "__TMP__", "--only", ","], "usage"),
    ],
)
def test_errors_under_json_name_their_kind(fakes, tmp_path, capsys, argv, kind):
    import json

    f = tmp_path / "file.txt"
    f.write_text("x")
    argv = [str(f) if a == "__FILE__" else str(tmp_path) if a == "__TMP__" else a for a in argv]
    assert main(["report", "--json", *argv]) == 2
    obj = json.loads(capsys.readouterr().out)
    assert obj["kind"] == kind and obj["error"]
    assert fakes.calls == []


def test_signals_are_held_while_the_report_is_written(fakes, tmp_path, monkeypatch):
    """A SIGINT that arrives while the files are written takes effect once they are in place."""
    import signal

    name = fakes.add("fake_ok")
    rep = R.run_report([name], progress=False)
    real = R._stage_and_move

    def interrupted(*a, **k):
        signal.raise_signal(signal.SIGINT)  # held: delivered when writing is done
        return real(*a, **k)

    monkeypatch.setattr(R, "_stage_and_move", interrupted)
    # Python's own SIGINT handler for this test: in two clean-clone CI runs of the whole
    # suite the worker's handler at this point did not raise (DID NOT RAISE; the test
    # passes alone and in this file); what set it is not found yet.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            R.write_report(rep, tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    assert sorted(os.listdir(tmp_path)) == ["figures", "report.html", "report.md"]


def test_sigterm_while_the_report_is_written_terminates_after_it(tmp_path):
    """SIGTERM's default action (terminate) is carried out once the files are in place."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, signal
        from varprop._src import report as R
        from varprop._src.experiments.base import Claim, ExperimentResult, Figure
        res = ExperimentResult("x", "X", "s", claims=[Claim("c", True, "e")],
                               figures=[Figure("f", "cap", b"png")])
        real = R._stage_and_move
        def terminated(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)
        R._stage_and_move = terminated
        R.write_report(R.Report([res], True, 0, 0.0), {str(tmp_path)!r})
        print("not reached")
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGTERM, p.stderr
    assert "not reached" not in p.stdout
    assert sorted(os.listdir(tmp_path)) == ["figures", "report.html", "report.md"]
    assert (tmp_path / "figures" / "x-f.png").read_bytes() == b"png"
