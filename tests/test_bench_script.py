"""scripts/bench_check.py: its pure helpers on fixed numbers (nothing is timed or run);
scripts/bench_check_model.py: its table on fixed numbers, and one ``--quick`` run in a
subprocess (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_check")


def test_median_and_ratio(bench):
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert bench.median([0.7]) == 0.7
    with pytest.raises(ValueError):
        bench.median([])
    assert bench.ratio(0.77, 1.54) == pytest.approx(0.5)
    assert bench.ratio(1.0, 0.0) is None
    assert bench.ratio(None, 1.0) is None
    assert bench.ratio(1.0, None) is None


def test_fmt_and_parse_list(bench):
    assert bench.fmt(1.23456) == "1.235"
    assert bench.fmt(427.5231, 2) == "427.52"
    assert bench.fmt(None) == "—"
    assert bench.parse_list("10, 50,,100") == [10, 50, 100]
    assert bench.parse_list("plain,verdict", str) == ["plain", "verdict"]
    assert bench.parse_list("") == []


def test_markdown_table(bench):
    table = bench.markdown_table(["a", "b"], [["x", "1"], ["y", "22"]])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| x | 1 |", "| y | 22 |"]
    with pytest.raises(ValueError):
        bench.markdown_table(["a", "b"], [["only one"]])


def test_plain_and_compile_tables(bench):
    rows = [{"width": 512, "depth": 50, "plain_s": 0.42752, "check_s": 0.47595, "ratio": 1.11328}]
    assert bench.plain_table(rows).splitlines()[-1] == "| 512 | 50 | 427.52 | 475.95 | 1.113 |"
    crow = [{"depth": 100, "compile_s": 3.551, "ratio_to_first": 1.0}]
    assert bench.compile_table(crow).splitlines()[-1] == "| 100 | 3.55 | 1.00 |"


def _verdict_section(anyinit):
    return {
        "varprop": {
            "version": "0.1.0",
            "batch": 64,
            "times_s": [0.8, 0.7, 0.9],
            "median_s": 0.8,
            "seeds": [12, 16, 12],
            "verdicts": ["agrees", "agrees", "inconclusive"],
        },
        "anyinit": anyinit,
        "ratios": {"varprop/anyinit_analytic": 0.8 / 1.6} if "modes" in anyinit else {},
    }


def test_verdict_table_side_by_side(bench):
    anyinit = {
        "version": "0.4.0",
        "batch": 1024,
        "modes": {
            "analytic": {
                "times_s": [1.6, 1.5, 1.7],
                "median_s": 1.6,
                "healthy": [True, True, False],
                "forward_passes": [1, 1, 1],
            }
        },
    }
    lines = bench.verdict_table(_verdict_section(anyinit)).splitlines()
    assert lines[0].startswith("| library |") and lines[0].endswith("| varprop / this |")
    assert len(lines) == 4
    assert lines[2].startswith("| varprop 0.1.0 |")
    assert "| 3 | 0.800 | seeds 12, 16, 12; agrees ×2, inconclusive ×1 | 1.000 |" in lines[2]
    assert lines[3].startswith("| anyinit 0.4.0 analytic |")
    assert "| 3 | 1.600 | healthy ×2, unhealthy ×1; forward passes 1 ×3 | 0.500 |" in lines[3]


def test_verdict_table_without_anyinit(bench):
    lines = bench.verdict_table(_verdict_section({"skipped": "import failed"})).splitlines()
    assert len(lines) == 4
    assert lines[3] == "| anyinit | skipped: import failed | 0 | — | — | — |"


def test_merge_keeps_sections_not_rerun(bench):
    old = {"format": bench.FORMAT, "plain": {"rows": [1]}, "verdict": {"old": True}}
    new = {"verdict": {"old": False}}
    merged = bench.merge(old, new)
    assert merged == {"format": bench.FORMAT, "plain": {"rows": [1]}, "verdict": {"old": False}}
    # A file of the earlier format (no "format" key) is replaced, not merged.
    legacy = {"ratio": [], "compile": [], "verdict": None, "batch": 128}
    assert bench.merge(legacy, new) == {"format": bench.FORMAT, "verdict": {"old": False}}
    assert bench.merge(None, new) == {"format": bench.FORMAT, "verdict": {"old": False}}


# --------------------------------------------------------------------- bench_check_model


def _model_row(run_ratio):
    side = {"compile_s": 2.0, "run_median_s": 0.05}
    return {
        "model": "transformer",
        "layers": 15,
        "probe": {"compile_s": 3.0, "run_median_s": 0.05 * run_ratio},
        "baseline": side,
        "baseline_acts": {"compile_s": 1.0, "run_median_s": 0.04},
        "compile_ratio": 1.5,
        "run_ratio": run_ratio,
        "run_ratio_acts": 0.05 * run_ratio / 0.04,
    }


def test_bench_check_model_table():
    bench = load_script("bench_check_model")
    lines = bench.results_table([_model_row(1.2), _model_row(1.5)]).splitlines()
    assert lines[0].startswith("| model | layers | compile probe (s) |")
    assert (
        lines[2]
        == "| transformer | 15 | 3.00 | 2.00 | 1.50 | 60.0 | 50.0 | 1.20 | yes | 40.0 | 1.50 |"
    )
    assert "| 1.50 | no |" in lines[3]
    assert bench.parse_list("resnet, transformer,,") == ["resnet", "transformer"]


@pytest.mark.slow
def test_bench_check_model_quick_run(tmp_path):
    """The script end to end on its smallest case (about 25 s on 2 loaded cores)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_check_model.py"
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--repeats", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| transformer | " in r.stdout
    data = json.loads(out.read_text())
    assert data["run"]["backend"] and data["run"]["machine"]["cpu_count"] >= 1
    (row,) = data["rows"]
    assert row["model"] == "transformer" and row["seeds"] == 4 and row["repeats"] == 1
    assert row["inputs"] == [[8, 64]] and row["layers"] >= 1
    for side in ("probe", "baseline", "baseline_acts"):
        rec = row[side]
        assert rec["compile_s"] > 0 and rec["lower_s"] > 0 and rec["hlo_chars"] > 0
        assert len(rec["run_times_s"]) == 1 and rec["run_median_s"] > 0
    assert row["run_ratio"] == pytest.approx(
        row["probe"]["run_median_s"] / row["baseline"]["run_median_s"]
    )
    assert row["compile_ratio"] == pytest.approx(
        row["probe"]["compile_s"] / row["baseline"]["compile_s"]
    )


@pytest.mark.slow
def test_bench_monitor_short_run():
    """scripts/bench_monitor.py end to end on the MLP, a few rounds (nothing is asserted
    about the times but that they exist and the ratios are theirs): every variant, the
    static switch's two programs included, split into recording and non-recording steps."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_monitor.py"
    argv = ["--models", "mlp", "--steps", "6", "--every", "3", "--json", "-"]
    r = subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads(r.stdout)["rows"]
    assert row["model"] == "mlp" and row["every"] == 3
    variants = ("before", "after", "after+updates", "after+updates, static")
    assert set(variants) <= set(row) and set(variants) <= set(row["compile_s"])
    for name in variants:
        v = row[name]
        assert v["n_on"] == 2 and v["n_off"] == 4, (name, v)  # timed steps 6..11 (6 warm)
        assert v["off_ratio"] == pytest.approx(v["off_ms"] / row["baseline_ms"])
        assert v["on_ratio"] == pytest.approx(v["on_ms"] / row["baseline_ms"])
