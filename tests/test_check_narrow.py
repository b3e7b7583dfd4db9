"""The checker on narrow, degenerate and float32-limited networks (issue: never lie, never
crash). Each case reproduces a wrong answer of the first checker."""

import math

import jax
import numpy as np
import pytest

import varprop
from varprop import initializers as I
from varprop._src.core.network import init_params, make_network
from varprop._src.errors import InputError
from varprop._src.probe import law_summary, probe_params

# -- the probe's small-sample statistics against NumPy ---------------------------------------


def _np_law_stats(v):
    v = np.asarray(v, np.float64)
    B = v.shape[0]
    tot = np.sum(v**2)
    rows = v.sum(axis=1)
    cols = v.sum(axis=0)
    return {
        "lrs2": np.log(np.mean(rows**2)),
        "gram": np.sum((v.T @ v) ** 2) / tot**2,
        "diag": np.sum(np.sum(v**2, axis=0) ** 2) / tot**2,
        "meanfrac": np.sum(cols**2) / (B * tot),
        "sumfrac": np.sum((rows @ v) ** 2) / (tot * np.sum(rows**2)),
        "crossfrac": np.sum((rows @ v) * cols) / (tot * np.sqrt(np.sum(rows**2) * B)),
    }


@pytest.mark.parametrize("shape", [(5, 3), (3, 7), (16, 16)])
def test_law_summary_equals_numpy(shape):
    v = jax.random.normal(jax.random.key(4), shape) * 1e-20 + 3e-21  # scaled: no underflow
    got = np.asarray(law_summary(v, True), np.float64)
    ref = _np_law_stats(np.asarray(v))
    names = ("lrs2", "gram", "diag", "meanfrac", "sumfrac", "crossfrac")
    for k, name in enumerate(names, start=4):
        np.testing.assert_allclose(got[k], ref[name], rtol=2e-5, err_msg=name)


def test_probe_narrow_layers_carry_the_small_sample_statistics():
    net = make_network((3, 2, 5), "tanh", I.glorot_normal(), I.normal(0.1))
    params = init_params(net, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (6, 3)) + 0.2
    v = jax.random.normal(jax.random.key(3), (6, 5))
    st = probe_params(net, params, x, v)
    W1 = np.asarray(params[0]["W"][0], np.float64)
    b1 = np.asarray(params[0]["b"][0], np.float64)
    W2 = np.asarray(params[1]["W"][0], np.float64)
    xs = np.asarray(x, np.float64)
    z1 = xs @ W1 + b1
    ref_x1 = _np_law_stats(xs)
    assert float(st.forward.x_gram[0]) == pytest.approx(ref_x1["gram"], rel=1e-5)
    assert float(st.forward.x_lrs2[0]) == pytest.approx(ref_x1["lrs2"], rel=1e-5)
    ref_x2 = _np_law_stats(np.tanh(z1))
    assert float(st.forward.x_diag[1]) == pytest.approx(ref_x2["diag"], rel=1e-5)
    # dL/dz of the output layer is v; of layer 1, (v W2^T) * tanh'(z1).
    gz1 = (np.asarray(v, np.float64) @ W2.T) * (1 - np.tanh(z1) ** 2)
    assert float(st.backward.gz_gram[0]) == pytest.approx(_np_law_stats(gz1)["gram"], rel=1e-4)
    assert float(st.backward.gz_gram[1]) == pytest.approx(
        _np_law_stats(np.asarray(v))["gram"], rel=1e-5
    )


# -- narrow nets: never a false "disagrees" --------------------------------------------------

# The configurations that gave false "disagrees" before (widths, activation, batch).
NARROW = [
    ((1, 1, 1), "relu", 128),
    ((32, 1, 32), "linear", 128),
    ((4, 4, 4, 4), "tanh", 128),
    ((2, 2, 2), "relu", 128),
    ((8, 8, 8), "relu", 2),
    ((64, 2, 64, 10), "relu", 128),
]


@pytest.mark.parametrize("widths,act,batch", NARROW)
def test_narrow_correct_nets_never_disagree(widths, act, batch):
    init = "he_normal" if act == "relu" else "glorot_normal"
    verdicts = [
        varprop.check(widths, act, init, seeds=2, max_seeds=4, seed=s, batch=batch).verdict
        for s in range(12)
    ]
    assert "disagrees" not in verdicts, verdicts


def test_one_unit_is_inconclusive_and_says_why():
    r = varprop.check([1, 1, 1], "relu", "he_normal", seeds=2, max_seeds=4, seed=0)
    assert r.verdict == "inconclusive"
    notes = [row.note for row in r.layers if row.verdict == "inconclusive"]
    assert notes and all(n for n in notes), notes
    assert any("seeds needed" in n or "too narrow" in n for n in notes), notes
    assert any("inconclusive" in d for d in r.diagnosis)


def test_narrow_net_agrees_once_enough_seeds_are_pooled():
    r = varprop.check([2, 2, 2], "relu", "he_normal", seeds=64, max_seeds=2048, batch=32, seed=1)
    assert r.verdict == "agrees", r.summary()
    assert {row.test for row in r.layers} == {"small-sample law", "spread"}


def test_narrow_net_with_wrong_scale_disagrees():
    r = varprop.check(
        [8, 8, 8, 8], "linear", "normal:stddev=0.7", expect="glorot_normal", seeds=8, seed=2
    )
    # Var(w) = 0.49 against 1/8: four times the law in every layer.
    assert r.verdict == "disagrees", r.summary()
    fwd = [row for row in r.layers if row.direction == "forward"]
    assert all(row.verdict == "disagrees" for row in fwd[:-1])


# -- schemes with a non-zero mean, degenerate networks ---------------------------------------


def test_ones_weights_follow_the_law_with_the_mean_and_are_degenerate():
    # z = x W with W = 1: E[z_j^2] = E[(sum_i x_i)^2], not n Var(w) E[x^2] = 0.
    r = varprop.check([8, 8, 8, 4], "relu", "ones", seeds=2, max_seeds=4)
    assert r.verdict == "agrees", r.summary()
    ratios = [row.ratio for row in r.layers if row.ratio is not None]
    assert all(abs(x - 1) < 1e-4 for x in ratios), ratios
    assert r.exit_code() == 4
    assert any("constant weights" in d for d in r.degenerate), r.degenerate


def test_zero_weights_are_degenerate_not_underflow():
    r = varprop.check([16, 16, 16, 4], "relu", "zeros", seeds=2, max_seeds=2)
    assert r.verdict == "agrees"
    assert r.exit_code() == 4
    assert r.first_underflow_layer is None
    assert any("zero weights" in d for d in r.degenerate)
    assert any("dead gradients" in d for d in r.degenerate)


def test_dead_relu_net_is_not_healthy():
    r = varprop.check(
        [16, 16, 16, 4], "relu", "he_normal", bias_init="constant:value=-100", seeds=2, max_seeds=4
    )
    assert r.verdict != "disagrees", r.summary()
    assert r.exit_code() == 4 or r.verdict == "inconclusive"
    assert any("dead activations" in d for d in r.degenerate), r.degenerate


def test_require_healthy_turns_vanishing_into_exit_4():
    r = varprop.check([64] * 6 + [10], "relu", "xavier_fan_in_normal", seeds=4, seed=3)
    assert r.verdict == "agrees"
    assert r.health["forward"]["state"] == "vanishing"
    assert r.exit_code() == 0
    assert r.exit_code(require_healthy=True) == 4


def test_assert_healthy_raises_on_a_degenerate_network():
    with pytest.raises(AssertionError, match="degenerate"):
        varprop.assert_healthy([8, 8, 4], "relu", "ones", seeds=2, max_seeds=2)
    r = varprop.assert_healthy([32, 32, 32, 8], "relu", "he_normal", seeds=4, seed=1)
    assert r.verdict == "agrees"


# -- float32 limits ---------------------------------------------------------------------------


def test_underflow_is_predicted_and_is_not_a_disagreement():
    # Var(w) = 1e-12 on 64 units with ReLU: E[z^2] shrinks by 3.2e-11 per layer; products
    # x_i w_ij fall below the smallest normal float32 (1.2e-38) at layer 8.
    widths = [64] + [64] * 8 + [10]
    r = varprop.check(widths, "relu", "normal:stddev=1e-6", seeds=2, max_seeds=4)
    assert r.predicted_underflow_layer == 8
    assert r.first_underflow_layer == 8
    assert r.verdict != "disagrees", r.summary()
    limited = [row for row in r.layers if row.verdict == "float32_limit"]
    assert limited and min(row.layer for row in limited if row.direction == "forward") <= 8
    assert r.exit_code() in (3, 4)
    assert any("underflow" in d and "as the law predicts" in d for d in r.diagnosis), r.diagnosis


def test_overflow_rows_get_their_own_verdict():
    r = varprop.check([256] * 41, "relu", "normal:stddev=1.0", seeds=2, max_seeds=2, batch=16)
    assert r.first_nonfinite_layer is not None
    assert abs(r.first_nonfinite_layer - r.predicted_nonfinite_layer) <= 1
    assert r.verdict != "disagrees", r.summary()
    assert any(row.verdict == "float32_limit" for row in r.layers)
    assert r.exit_code() == 4 or r.verdict == "inconclusive"


def test_huge_bias_stays_inside_the_probe_statistics():
    r = varprop.check(
        [16, 16, 4], "relu", "he_normal", bias_init="constant:value=1e20", seeds=2, max_seeds=4
    )
    # E[b^2] = 1e40 overflows float32, log E[b^2] = 92.1 does not.
    assert r.first_nonfinite_layer is None
    fwd = [row for row in r.layers if row.direction == "forward"]
    assert fwd[0].measured == pytest.approx(1e40, rel=1e-3)
    # z = x W + 1e20 keeps nothing of x W (float32 has 24 bits): layer 1 cannot be tested,
    # and says so; layer 2's input rows are all 1e20, and z_2 = 1e20 sum_i w_i + b is.
    assert fwd[0].verdict == "float32_limit", r.summary()
    assert "resolution" in fwd[0].note
    assert fwd[1].verdict in ("agrees", "inconclusive"), r.summary()
    assert r.verdict != "disagrees"


def test_overflow_prediction_uses_the_extreme_value_factor():
    # The largest of B n values is about sqrt(2 ln(B n) q): with it the first non-finite
    # layer comes earlier than where E[z^2] itself passes FLOAT32_MAX^2.
    from varprop._src.laws.catalog import scheme_from_spec
    from varprop._src.laws.propagation import propagate

    # 64 units, Var(w) = 1/16, ReLU: q_1 = 64/16 = 4, then doubling: q_l = 2^(l+1).
    L = 299
    widths = [64] * (L + 1)
    schemes = [scheme_from_spec("normal:stddev=0.25")] * L
    pred = propagate(widths, "relu", schemes, batch=128)
    big = 3.4028235e38
    plain = math.floor(2 * math.log2(big))  # sqrt(2^(l+1)) > max: layer 255
    extreme = math.floor(math.log2(big**2 / (2 * math.log(128 * 64))))  # layer 251
    assert np.allclose(pred.forward[:10], 2.0 ** np.arange(2, 12))
    assert extreme < plain
    assert pred.first_nonfinite == extreme


# -- bad input is refused before any work -----------------------------------------------------


def test_a_network_too_big_for_memory_is_refused_with_the_estimate():
    with pytest.raises(InputError, match="GiB") as e:
        varprop.check([2**31 - 1, 10], "relu", "he_normal")
    assert e.value.kind == "resources"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tolerance": 1.5}, "tolerance"),
        ({"seed": 2**64}, "seed"),
        ({"batch": 10**30}, "batch"),
        ({"alpha": 1.0}, "alpha"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        varprop.check([4, 4, 2], "relu", "he_normal", **kwargs)


def test_cli_exit_code_4_for_a_degenerate_network(capsys):
    from varprop._src.cli import main

    code = main(["check", "--init", "ones", "--widths", "8,8,4", "--max-seeds", "4", "--quiet"])
    out = capsys.readouterr().out
    assert code == 4, out
    assert "Law: agrees" in out and "Network: degenerate" in out


def test_centered_test_sees_a_wrong_scale_under_a_large_bias():
    # With E[b^2] = 1e6 the uncentered E[z^2] is almost all bias, so Var(w) 1.2x the law
    # changes it by 1e-6; the batch-centered test removes the bias and sees the 1.2.
    r = varprop.check(
        [64, 128, 128, 10],
        "relu",
        "variance_scaling:scale=2.4,mode=fan_in,distribution=normal",
        expect="he_normal",
        bias_init="constant:value=1000",
        seed=5,
    )
    first = next(row for row in r.layers if row.layer == 1 and row.direction == "forward")
    assert first.verdict == "disagrees", r.summary()
    assert first.ratio_low <= 1.2 <= first.ratio_high  # the true factor is in the interval


def test_asymmetric_truncated_normal_follows_the_law_with_its_mean():
    # N(0, s^2) truncated to [0.5, 1.7] s: all weights positive, E[w] = 1.04 s. Without the
    # mean term the forward ratio of layer 2 was far above 1 ("disagrees, ratio 88").
    r = varprop.check([32, 64, 64, 10], "relu", "truncated_normal:lower=0.5,upper=1.7", seed=3)
    assert r.verdict == "agrees", r.summary()
    # The end-to-end prediction with a mean is mean-field (a shared and an independent
    # Gaussian per layer, laws.propagate): it must at least call the health right.
    # (Measured here: 0.206 per layer against 0.179 predicted; 0.065 before the shared
    # component was modelled. No band is asserted: the approximation has none derived.)
    fwd = r.health["forward"]
    assert fwd["state"] == fwd["predicted_state"] == "vanishing"
