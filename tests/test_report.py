"""The report and the ``experiment``/``report`` commands, end to end on the quick runs."""

import re

import pytest

from varprop._src import report as R
from varprop._src.cli import main
from varprop._src.experiments.base import Experiment, registry

EXPECTED = [
    "zeros",
    "constant",
    "small_random",
    "standard_normal",
    "xavier",
    "he",
    "gains",
    "deep_training",
    "histograms",
    "batchnorm",
    "fixup",
    "data_standardization",
    "conv_resnet_depth",
    "transformer_ln",
    "coord_check",
    "deep_relu_training",
    "batchnorm_train_eval",
]


def test_registry_has_the_seventeen_experiments_in_order():
    assert list(registry()) == EXPECTED


@pytest.fixture
def shared_runs(monkeypatch, quick_result):
    """Experiment.run returns the session's quick run (seed 0) instead of running again, so
    that the report test and the per-experiment tests share one computation each."""

    def run(self, cfg=None):
        assert cfg is not None and cfg.quick and cfg.seed == 0
        return quick_result(self.name)

    monkeypatch.setattr(Experiment, "run", run)


def test_quick_report_end_to_end(tmp_path, shared_runs, capsys):
    code = main(["report", "--quick", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    results = [registry()[n].run(R.RunConfig(quick=True)) for n in EXPECTED]  # type: ignore[attr-defined]
    for r in results:
        # Every section, every figure (file, Markdown link, embedded PNG), every verdict.
        assert f'<h2 id="{R._slug(r.title)}">' in page, r.name
        assert f"## {r.title}" in md, r.name
        assert r.figures, f"{r.name} has no figure"
        for f in r.figures:
            png = tmp_path / "figures" / f"{r.name}-{f.name}.png"
            assert png.read_bytes()[:4] == b"\x89PNG", png
            assert f"(figures/{r.name}-{f.name}.png)" in md
        assert r.claims, f"{r.name} makes no claim"
        for c in r.claims:
            assert c.held, f"{r.name}: {c.statement}: {c.evidence}"
            assert c.statement in md
        assert r.laws, f"{r.name} states no law"
    assert page.count("data:image/png;base64,") == sum(len(r.figures) for r in results)
    # figures/ holds exactly this run's figures (and the marker that it is varprop's)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        [R.FIGURES_MARKER] + [f"{r.name}-{f.name}.png" for r in results for f in r.figures]
    )
    # Every law is typeset (SVG) rather than left as source.
    n_laws = sum(len(r.laws) for r in results)
    assert page.count('<div class="law">') == n_laws
    assert page.count("<svg") >= n_laws
    assert "failed" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S).split("</table>")[0]
    assert code == 0, out
    assert "wrote" in out
    assert out.rstrip().endswith(
        f"all {sum(len(r.claims) for r in results)} claims of 17 experiments held"
    )


def test_fmt_cells():
    assert R.fmt(None) == "—"
    assert R.fmt(0.5) == "0.5"
    assert R.fmt(1.23456e-9) == "1.235e-09"
    assert R.fmt(float("inf")) == "inf"
    assert R.fmt(7) == "7"
    assert R.fmt(True) == "yes"


def test_tex_to_svg_typesets_and_refuses_what_it_cannot_parse():
    svg = R.tex_to_svg(r"\frac{2}{n_{\mathrm{in}}}")
    assert svg is not None and svg.startswith("<svg")
    assert R.tex_to_svg(r"\begin{cases} 1 & x \end{cases}") is None


@pytest.mark.parametrize(
    "argv, match",
    [
        (["experiment", "nope"], "unknown experiment 'nope'"),
        (["experiment"], "give an experiment NAME"),
        (["report", "--out", "__FILE__", "--quick"], "is not a directory"),
        (["report", "--out", "x", "--only", "zeros,bogus"], "unknown experiment 'bogus'"),
        (["report", "--out", "x", "--only", ","], "--only ',' names no experiment"),
        (["report", "--out", "__FILE__/sub"], "cannot be created"),
        (["experiment", "zeros", "--out", "__FILE__"], "is not a directory"),
        (["experiment", "zeros", "--data-dir", "/no/such/dir"], "is not a directory"),
    ],
)
def test_usage_errors_exit_2(argv, match, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    argv = [a.replace("__FILE__", str(f)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err
    assert "Traceback" not in err


def test_experiment_list(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for n in EXPECTED:
        assert n in out


def test_tex_to_svg_drops_what_mathtext_lacks():
    """SymPy writes integrals with \\limits, which mathtext does not know."""
    import sympy as sp

    x = sp.Symbol("x")
    tex = sp.latex(sp.Integral(sp.exp(-(x**2)), (x, -sp.oo, sp.oo)))
    assert r"\limits" in tex
    assert R.tex_to_svg(tex) is not None
