"""scripts/bench_solve_init.py: its pure helpers and tables on fixed numbers, and one
``--quick --json`` run in a subprocess (slow; skipped without anyinit)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_solve_init")


def test_spread_by_shape(bench):
    layers = [
        ("a", (2, 8), 1.0),
        ("b", (2, 8), 4.0),
        ("c", (2, 4), 0.5),
        ("d", (2, 4), 0.1),
        ("e", (2, 4), 0.0),  # an identity branch: left out, counted
        ("f", (2, 3), 9.0),  # alone in its shape
    ]
    s = bench.spread(layers)
    assert s["max_over_min"] == pytest.approx(5.0)
    assert (s["shape"], s["max"], s["min"]) == ([2, 4], "c", "d")
    assert s["groups"] == 2 and s["zero_rows"] == 1
    lone = bench.spread([("a", (1,), 2.0), ("b", (2,), 3.0)])
    assert lone["max_over_min"] is None and lone["groups"] == 0


def test_compounded_and_first_to_last(bench):
    layers = [("a", (4,), 1.0), ("b", (4,), 2.0), ("c", (2,), 8.0), ("d", (2,), 4.0)]
    fwd = bench.compounded(layers, "forward")
    assert fwd["change"] == pytest.approx(2.0 * 0.5) and fwd["steps"] == 2
    bwd = bench.compounded(layers, "backward")
    assert bwd["change"] == pytest.approx(0.5 * 2.0) and bwd["steps"] == 2
    grow = [("a", (4,), 1.0), ("z", (4,), 0.0), ("b", (4,), 3.0)]
    assert bench.compounded(grow, "forward") == {"change": pytest.approx(3.0), "steps": 1}
    assert bench.compounded(grow, "backward")["change"] == pytest.approx(1 / 3)
    assert bench.first_to_last(layers, "forward") == pytest.approx(4.0)
    assert bench.first_to_last(layers, "backward") == pytest.approx(0.25)
    assert bench.first_to_last([("a", (1,), 1.0)], "forward") is None


def test_small_helpers(bench):
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        bench.median([])
    assert bench.ratio(1.0, 4.0) == 0.25 and bench.ratio(1.0, None) is None
    assert bench.fmt(None) == "—" and bench.fmt(1.23456, 2) == "1.23"
    assert bench.fmt_g(2.1e-5) == "2.1e-05" and bench.fmt_g(45.61) == "45.6"
    assert bench.fmt_g(None) == "—"
    assert bench.states_label(["preserved", "preserved"]) == "preserved"
    assert bench.states_label(["preserved", "vanishing"]) == "preserved ×1, vanishing ×1"
    assert bench.states_label([]) == "—"
    assert bench.parse_list("cnn, resnet,,") == ["cnn", "resnet"]
    table = bench.markdown_table(["a", "b"], [["x", "1"]])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| x | 1 |"]
    with pytest.raises(ValueError):
        bench.markdown_table(["a", "b"], [["only one"]])


def _summary(bench, change, states):
    layers = [("a", (4,), 1.0), ("b", (4,), change)]
    return bench.summarize(layers, "forward", states)


def _row(bench):
    ok = {
        "forward": _summary(bench, 2.0, ["preserved"]),
        "backward": _summary(bench, 0.05, ["vanishing"]),
    }
    return {
        "model": "resnet_nonorm",
        "layers": 7,
        "repeats": 3,
        "draws": 1,
        "timing": {
            "varprop": {"cold_s": 7.4, "median_s": 0.383, "solve_median_s": 0.379},
            "anyinit": {"cold_s": 0.22, "median_s": 0.062},
            "ratio": 0.383 / 0.062,
        },
        "moments": {"flax": ok, "varprop": ok, "anyinit": {"error": "ValueError: cannot"}},
        "anyinit_output": {
            "graph_fidelity": "linear",
            "zero_scales_made_nonzero": ["blocks_0/bn2"],
            "norm_scales_rewritten": {"blocks_0/bn2": 1.4142},
            "fan_mismatch": [{"path": "q", "anyinit_fan": 256.0, "fan_in": 64.0}],
            "warnings": ["the JAX backend recovers call order, not graph structure"],
        },
        "anyinit_nnx": {"error": "BackendNotFoundError: no AnyInit backend"},
    }


def test_tables_and_notes(bench):
    row = _row(bench)
    lines = bench.timing_table([row]).splitlines()
    assert lines[0].startswith("| model | layers | varprop cold (s) |")
    assert lines[2] == "| resnet_nonorm | 7 | 7.40 | 0.383 | 0.379 | 0.22 | 0.062 | 6.18 |"
    lines = bench.moments_table([row]).splitlines()
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---|"
    assert lines[2] == (
        "| resnet_nonorm | flax | 1–2 | 2 | 2 (1) | 20 | 0.05 (1) | preserved; vanishing |"
    )
    assert lines[4] == (
        "| resnet_nonorm | anyinit | — | — | — | — | — | not measured: ValueError (notes) |"
    )
    alone = dict(row, moments=dict(row["moments"], flax={**row["moments"]["flax"]}))
    alone["moments"]["flax"]["forward"] = bench.summarize([("a", (4,), 1.0)], "forward", [])
    assert "| flax | 1–1 | — | — (0) |" in bench.moments_table([alone]).splitlines()[2]
    notes = bench.anyinit_notes([row])
    assert "resnet_nonorm: graph fidelity 'linear'" in notes
    assert "resnet_nonorm: zero-initialized norm scales set nonzero: blocks_0/bn2" in notes
    assert "resnet_nonorm: q scaled for fan_in 256, the layer's is 64" in notes
    assert "NNX twins of resnet_nonorm: BackendNotFoundError: no AnyInit backend" in notes
    other = dict(row, model="cnn", anyinit_nnx={"error": "BackendNotFoundError: no... CNN."})
    assert bench.anyinit_notes([row, other])[-1].startswith(
        "NNX twins of resnet_nonorm, cnn: BackendNotFoundError: no AnyInit backend"
    )
    failed = dict(row, timing=dict(row["timing"], anyinit={"error": "ValueError: x"}, ratio=None))
    assert bench.timing_table([failed]).splitlines()[2].endswith("| — | error: ValueError | — |")


@pytest.mark.slow
def test_quick_run(tmp_path):
    """The script end to end on its smallest case (about 45 s on 2 loaded cores)."""
    pytest.importorskip(
        "anyinit", reason="anyinit is not importable: pip install anyinit==0.4.0 (extra 'bench')"
    )
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_solve_init.py"
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| resnet_nonorm | " in r.stdout
    data = json.loads(out.read_text())
    assert data["format"] == 1 and data["run"]["versions"]["anyinit"]
    (row,) = data["rows"]
    assert row["model"] == "resnet_nonorm" and row["repeats"] == 3 and row["draws"] == 1
    assert row["layers"] == 7 and row["inputs"] == [[16, 32, 32, 3], "float32"]

    vp, an = row["timing"]["varprop"], row["timing"]["anyinit"]
    assert len(vp["times_s"]) == 3 and vp["median_s"] > 0 and vp["cold_s"] > 0
    assert vp["times_s"] == pytest.approx(
        [s + a for s, a in zip(vp["solve_s"], vp["apply_s"], strict=True)]
    )
    assert len(an["times_s"]) == 3 and an["median_s"] > 0
    assert row["timing"]["ratio"] == pytest.approx(vp["median_s"] / an["median_s"])
    assert set(row["varprop_solved_std"]) == set(row["moments"]["varprop"]["weight_std"])

    for init in ("flax", "varprop", "anyinit"):
        m = row["moments"][init]
        assert len(m["check_model_s"]) == 1
        paths = {(x["path"], x["direction"]) for x in m["rows"]}
        assert ("stem", "forward") in paths and ("head", "backward") in paths
        for x in m["rows"]:
            assert len(x["measured"]) == 1 and x["mean"] == x["measured"][0]
            assert math.isfinite(x["mean"]) and x["shape"]
        for d in ("forward", "backward"):
            s = m[d]
            assert len(s["health"]) == 1 and s["compounded"]["steps"] >= 1
            assert 0 < s["range"][0] <= s["range"][1]
            assert s["spread"]["max_over_min"] >= 1
    v = row["moments"]["varprop"]
    assert v["forward"]["health"] == ["preserved"]
    assert v["backward"]["health"] == ["preserved"]
    assert row["anyinit_output"]["graph_fidelity"] == "linear"
    assert row["anyinit_nnx"]["error"].startswith("BackendNotFoundError")
    assert "NNX twins of resnet_nonorm: BackendNotFoundError" in r.stdout
