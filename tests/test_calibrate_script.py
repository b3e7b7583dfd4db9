"""scripts/calibrate.py: its interval and the pooling of split runs (no checks are run)."""

import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def cal():
    return load_script("calibrate")


def test_clopper_pearson_closed_forms(cal):
    # k = 0: the upper bound solves (1 - p)^n = alpha/2; k = n mirrors it.
    for n in (10, 200, 367):
        lo, hi = cal.clopper_pearson(0, n)
        assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
        lo, hi = cal.clopper_pearson(n, n)
        assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    # 368 clean configurations are the fewest whose upper bound is at most 1%.
    assert cal.clopper_pearson(0, 368)[1] <= 0.01 < cal.clopper_pearson(0, 367)[1]


def _run(tmp_path, name, start, n, false):
    verdicts = {"agrees": n - false, "disagrees": false, "inconclusive": 0}
    out = {"start": start, "fpr": {"false": false, "n": n, "verdicts": verdicts}}
    path = tmp_path / name
    path.write_text(json.dumps(out))
    return str(path)


def test_combine_pools_disjoint_runs(cal, tmp_path, capsys):
    a = _run(tmp_path, "a.json", 0, 200, 1)
    b = _run(tmp_path, "b.json", 200, 100, 2)
    cal.combine([a, b])
    out = capsys.readouterr().out
    assert "FPR: 3/300 = 1.000%" in out and "'disagrees': 3" in out


def test_combine_rejects_overlapping_runs(cal, tmp_path):
    a = _run(tmp_path, "a.json", 0, 200, 0)
    b = _run(tmp_path, "b.json", 150, 100, 0)
    with pytest.raises(SystemExit, match="overlap"):
        cal.combine([a, b])
