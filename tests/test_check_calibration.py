"""A fixed-seed slice of the checker's calibration (scripts/calibrate.py runs the full grids):
no false "disagrees" on correct nets, and the power to see Var(w) off by 1.2x.

Fixed seeds make these deterministic: they fail when the statistics change for the worse
(a dropped Bonferroni correction shows up as false "disagrees", a widened band as lost
power), not by chance.
"""

import pytest

import varprop

# (widths, activation, init): wide and narrow, with a bottleneck, each over several seeds.
CORRECT = [
    ([64, 128, 128, 128, 10], "relu", "he_normal"),
    ([32, 64, 64, 64, 10], "tanh", "glorot_uniform"),
    ([64, 64, 4, 64, 10], "relu", "he_uniform"),
    ([3, 3, 3, 3], "linear", "glorot_normal"),
    ([8, 8, 8], "tanh", "glorot_normal"),
]


@pytest.mark.parametrize("widths,act,init", CORRECT)
def test_correct_nets_are_never_said_to_disagree(widths, act, init):
    verdicts = [
        varprop.check(widths, act, init, seed=100 + s, max_seeds=16).verdict for s in range(6)
    ]
    assert "disagrees" not in verdicts, verdicts


def test_power_against_variance_1_2x_in_every_layer():
    # variance_scaling with scale 2.4 draws Var(w) = 1.2 x the He law (2 / fan_in).
    verdicts = [
        varprop.check(
            [128] * 6 + [10],
            "relu",
            "variance_scaling:scale=2.4,mode=fan_in,distribution=normal",
            expect="he_normal",
            seed=200 + s,
        ).verdict
        for s in range(6)
    ]
    assert verdicts == ["disagrees"] * 6, verdicts


def test_power_against_variance_1_2x_in_one_layer():
    inits = ["he_normal"] * 6
    inits[3] = "variance_scaling:scale=2.4,mode=fan_in,distribution=normal"
    for s in range(3):
        r = varprop.check([128] * 6 + [10], "relu", inits, expect="he_normal", seed=300 + s)
        assert r.verdict == "disagrees", r.summary()
        bad = {(row.layer, row.direction) for row in r.layers if row.verdict == "disagrees"}
        assert (4, "forward") in bad, bad
        assert all(layer == 4 for layer, _ in bad), bad
