"""The checker: probe vs a NumPy reference, verdicts on known-good and known-bad nets, CLI."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import varprop
from varprop import initializers as I
from varprop._src.cli import main
from varprop._src.core.network import init_params, make_network
from varprop._src.probe import probe_params

# -- the probe against a slow NumPy reference ----------------------------------------------


def _np_summary(v):
    v = np.asarray(v, np.float64)
    per_unit = np.mean(v**2, axis=0)
    m = per_unit.mean()
    return np.log(m), per_unit.var(ddof=1) / m**2, v.mean()


def test_probe_equals_numpy_reference():
    widths = (12, 16, 16, 16, 5)
    net = make_network(widths, "tanh", I.glorot_normal(), I.normal(0.1))
    params = init_params(net, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (9, 12)) + 0.5
    v = jax.random.normal(jax.random.key(3), (9, 5))
    st = probe_params(net, params, x, v)

    Ws = [np.asarray(w, np.float64) for p in params for w in p["W"]]
    bs = [np.asarray(b, np.float64) for p in params for b in p["b"]]
    h = np.asarray(x, np.float64)
    xs, zs = [], []
    for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        xs.append(h)
        z = h @ W + b
        zs.append(z)
        h = z if i == len(Ws) - 1 else np.tanh(z)
    # Backward by hand: dL/dy = v.
    gz = [None] * len(Ws)
    gx = [None] * len(Ws)
    g = np.asarray(v, np.float64)
    for i in range(len(Ws) - 1, -1, -1):
        gz[i] = g
        gx[i] = g @ Ws[i].T
        if i > 0:
            g = gx[i] * (1 - np.tanh(zs[i - 1]) ** 2)
    for i in range(len(Ws)):
        lm2, rv, mean = _np_summary(zs[i])
        np.testing.assert_allclose(st.forward.z_lm2[i], lm2, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(st.forward.z_rv[i], rv, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(st.forward.z_mean[i], mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(st.forward.x_lm2[i], _np_summary(xs[i])[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            st.backward.gz_lm2[i], _np_summary(gz[i])[0], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            st.backward.gx_lm2[i], _np_summary(gx[i])[0], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            st.backward.gx_rv[i], _np_summary(gx[i])[1], rtol=1e-4, atol=1e-6
        )
        if i < len(Ws) - 1:
            dphi2 = np.mean((1 - np.tanh(zs[i]) ** 2) ** 2)
            np.testing.assert_allclose(st.forward.dphi2[i], dphi2, rtol=1e-5)
        np.testing.assert_allclose(st.forward.b_lm2[i], np.log(np.mean(bs[i] ** 2)), rtol=1e-5)
    assert float(st.loss) == pytest.approx(float(np.sum(h * np.asarray(v, np.float64))), rel=1e-4)


def test_probe_statistics_finite_where_squares_overflow():
    # Values of size ~1e25: finite in float32, but their squares are not.
    net = make_network((8, 8), "linear", I.normal(1.0))
    params = [{"W": jnp.eye(8)[None] * 1e25, "b": jnp.zeros((1, 8))}]
    x = jax.random.normal(jax.random.key(0), (16, 8))
    st = probe_params(net, params, x, jnp.ones((16, 8)))
    expect = np.log(np.mean(np.asarray(x, np.float64) ** 2)) + 2 * np.log(1e25)
    np.testing.assert_allclose(st.forward.z_lm2[0], expect, rtol=1e-5)
    assert st.forward.z_finite[0] == 1


# -- verdicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "act"),
    [
        ("he_normal", "relu"),
        ("glorot_normal", "tanh"),
        ("lecun_normal", "selu"),
        ("glorot_uniform", "linear"),
    ],
)
def test_correct_schemes_agree(init, act):
    r = varprop.check([64, 128, 128, 128, 128, 10], act, init, seeds=4, max_seeds=32, seed=7)
    assert r.verdict == "agrees", r.summary()
    assert all(row.verdict == "agrees" for row in r.layers)


def test_xavier_relu_agrees_and_vanishes_by_half():
    r = varprop.check([128] * 8 + [10], "relu", "xavier_fan_in_normal", seeds=4, seed=3)
    assert r.verdict == "agrees", r.summary()
    assert r.health["forward"]["state"] == "vanishing"
    assert r.health["forward"]["predicted_factor"] == pytest.approx(0.5, rel=1e-12)
    # The measured factor is (q_7 / q_2)^(1/5) from seed means of E[z^2]. Per seed,
    # Var(log q_7 - log q_2) ~ 5 * sum(1/n_l) over the 5 layers between (Hanin & Rolnick 2018), so the
    # log factor has s.d. about sqrt(5 * 5 / 128 / seeds) / 5; allow 4 of them.
    sd = math.sqrt(5 * 5 / 128 / r.seeds) / 5
    assert abs(math.log(r.health["forward"]["measured_factor"] / 0.5)) <= 4 * sd


def test_fan_swap_is_diagnosed():
    r = varprop.check(
        [784, 256, 256, 10], "relu", "he_normal:mode=fan_out", expect="he_normal", seeds=4, seed=1
    )
    assert r.verdict == "disagrees"
    row = next(x for x in r.layers if x.layer == 1 and x.direction == "forward")
    assert row.verdict == "disagrees"
    assert row.ratio == pytest.approx(784 / 256, rel=0.1)
    assert any("fan_in/fan_out swap" in d and "layer 1" in d for d in r.diagnosis), r.diagnosis


def test_constant_wrong_gain_is_diagnosed():
    r = varprop.check([128] * 6 + [128], "relu", "he_normal:gain=1.7", expect="he_normal", seeds=4)
    assert r.verdict == "disagrees"
    assert any("constant wrong gain" in d for d in r.diagnosis), r.diagnosis


def test_standard_normal_overflows_where_predicted():
    r = varprop.check([512] * 41, "relu", "normal:stddev=1.0", seeds=2, max_seeds=2, batch=32)
    assert r.predicted_nonfinite_layer is not None
    assert r.first_nonfinite_layer == r.predicted_nonfinite_layer
    assert r.health["forward"]["state"] == "exploding"


def test_zeros_report_dead_gradients():
    r = varprop.check([32, 32, 32, 32, 4], "relu", "zeros", seeds=2, max_seeds=2)
    assert any("dead gradients" in d for d in r.diagnosis), r.diagnosis
    assert r.verdict == "agrees"  # exactly zero, as the degenerate law says


def test_assert_agrees_raises_with_table():
    with pytest.raises(AssertionError, match="disagrees"):
        varprop.assert_agrees(
            [64, 64, 64, 10], "relu", "normal:stddev=0.3", expect="he_normal", seeds=2
        )


# -- CLI ---------------------------------------------------------------------------------


def test_cli_check_default_runs(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "Law: agrees" in out and "Health forward: preserved" in out


def test_cli_check_json(capsys):
    code = main(
        ["check", "--widths", "64,64x3,10", "--init", "glorot_normal", "--act", "relu", "--json"]
    )
    assert code in (0, 3)
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] in ("agrees", "inconclusive")
    assert obj["seeds"] >= 4
    row = obj["layers"][0]
    for k in ("layer", "direction", "predicted", "measured", "ci_low", "ci_high", "verdict"):
        assert k in row
    assert obj["health"]["forward"]["state"] == "vanishing"
    assert {"first_nonfinite_layer", "predicted_nonfinite_layer", "diagnosis"} <= set(obj)


def test_cli_check_disagree_exit_code(capsys):
    code = main(
        ["check", "--widths", "64,64x3,10", "--init", "normal:stddev=0.3", "--expect", "he_normal"]
    )
    assert code == 1


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--init", "he_nromal"], "unknown initializer"),
        (["--act", "relux"], "relux"),
        (["--init", "he_normal:mode"], "expected key=value"),
        (["--init", "__import__('os').system('true')"], "bad name"),
        (["--widths", "784,256y3,10"], "bad entry '256y3'"),
        (["--widths", "784"], "at least an input and an output"),
        (["--batch", "1"], "--batch must be a whole number in [2,"),
        (["--seeds", "1"], "--seeds must be a whole number in [2,"),
        (["--max-seeds", "2"], "--max-seeds must be a whole number in [4,"),
        (["--tolerance", "0"], "--tolerance must be"),
        (["--tolerance", "nan"], "--tolerance must be"),
        (["--data", "mnist", "--data-dir", "/nonexistent/mnist"], "does not exist"),
    ],
)
def test_cli_check_usage_errors(argv, match, capsys):
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_check_rejects_nan_data():
    data = np.ones((10, 4), np.float32)
    data[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        varprop.check([4, 4, 2], "relu", "he_normal", data=data)


def test_mnist_data_agrees():
    from pathlib import Path

    d = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not d.is_dir():
        pytest.skip(f"MNIST not found at {d} (a user's clone has no ../shared)")
    assert main(["check", "--data", "mnist", "--data-dir", str(d), "--widths", "784,128x4,10"]) == 0


# -- normalization before each activation ---------------------------------------------------


def test_batchnorm_makes_standard_normal_init_agree_and_preserve_forward():
    r = varprop.check(
        [64, 128, 128, 128, 128, 10], "relu", "normal:stddev=1.0", norm="batchnorm", seed=2
    )
    assert r.verdict == "agrees", r.summary()
    assert r.health["forward"]["state"] == "preserved"
    assert r.first_nonfinite_layer is None
    assert any("eval mode" in d for d in r.diagnosis)
    # Without the normalization the same init explodes by n * Var(w) / 2 = 64 per layer.
    plain = varprop.check([64, 128, 128, 128, 128, 10], "relu", "normal:stddev=1.0", seed=2)
    assert plain.health["forward"]["state"] == "exploding"
    assert plain.health["forward"]["predicted_factor"] == pytest.approx(64.0)


def test_cli_check_norm_layernorm(capsys):
    argv = [
        "check",
        "--norm",
        "layernorm",
        "--init",
        "normal:stddev=0.01",
        "--widths",
        "64,128x4,10",
        "--json",
    ]
    assert main(argv) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["health"]["forward"]["state"] == "preserved"


def test_orthogonal_512_net_finishes_in_its_own_process():
    """Regression: with the orthogonal draws inside the probe's program, XLA:CPU (jaxlib
    0.10.2) sat idle forever on a 512-wide net (two batched QRs of 512x512 and 512x10 next
    to each other). The probe now draws QR-based kernels in programs of their own. Run in a
    subprocess so that a hang fails this test instead of stalling the suite."""
    import subprocess
    import sys

    code = (
        "import varprop\n"
        "r = varprop.check([512, 512, 512, 10], 'linear', 'orthogonal', seeds=2, max_seeds=2)\n"
        "print(r.verdict)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "agrees", proc.stdout
