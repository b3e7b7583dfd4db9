"""scripts/calibrate_models.py: ``--help`` (fast) and the ``--quick`` run end to end (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_models.py"


def test_help():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--quick", "--out", "--configs", "--power-trials", "--max-seeds"):
        assert flag in out.stdout


@pytest.mark.slow
def test_quick_run(tmp_path):
    path = tmp_path / "quick.json"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FPR:" in out.stdout and "Power" in out.stdout
    doc = json.loads(path.read_text())
    for key in ("command", "started_utc", "wall_time_s", "max_seeds", "fpr", "power", "configs"):
        assert key in doc
    assert doc["quick"] is True
    fpr, power = doc["fpr"], doc["power"]
    for key in ("n", "false", "rate", "ci95", "verdicts", "inconclusive", "false_positives"):
        assert key in fpr
    for key in ("n", "detected", "rate", "ci95", "verdicts", "misses"):
        assert key in power
    correct = doc["configs"]["fpr"]
    assert fpr["n"] == len(correct) >= 3 and power["n"] == len(doc["configs"]["power"]) >= 1
    families = {(c["family"], c["framework"]) for c in correct}
    assert {"cnn", "resnet", "transformer"} <= {f for f, _ in families}
    assert {"nnx", "linen"} <= {fw for _, fw in families}
    for c in correct:
        for key in ("family", "framework", "kwargs", "input", "init", "seed", "verdict"):
            assert key in c
        assert c["verdict"] in ("agrees", "inconclusive"), c  # no false positive, no error
    assert fpr["false"] == 0 and not fpr["false_positives"]
    lo, hi = fpr["ci95"]
    assert lo == 0.0 and 0 < hi < 1
    for c in doc["configs"]["power"]:
        assert c["mutated"] and "detected" in c and "disagreeing_paths" in c
