"""scripts/gpu_smoke.py end to end on this CPU (slow): it runs its three jobs, prints the
device, each job's verdict and time, and exits 0 because each gave the expected verdict.
The slopes it prints are compared here with the law's first-order exponents (Adam, output
layer: 3/2 under SP, 0 under μP; ``varprop.laws.predict_widths``), which the script also
prints next to them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"


@pytest.mark.slow
def test_quick_smoke_run():
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    out = r.stdout
    assert "backend cpu" in out and out.rstrip().endswith("smoke: ok")
    assert re.search(r"check 20x256 MLP \(He, ReLU\): agrees, preserved/preserved", out)
    assert re.search(r"check_model ResNet: (agrees|inconclusive), forward preserved", out)
    rows = re.findall(r"coord check (\w+) .*slope ([+-][0-9.]+) \(law ([+-][0-9.]+)\)", out)
    slopes = {name: float(slope) for name, slope, _ in rows}
    assert {name: law for name, _, law in rows} == {"SP": "+1.50", "muP": "+0.00"}
    assert slopes["SP"] > 0.5 and abs(slopes["muP"]) < 0.25
    assert "FAILED" not in out
