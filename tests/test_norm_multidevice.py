"""BatchNorm statistics shared across 8 (host-simulated) devices under ``jax.shard_map``.

``--xla_force_host_platform_device_count`` only takes effect before JAX initializes its
backends, and other test modules import JAX first in the same pytest process, so each
check runs in a fresh Python subprocess (the script below). It asserts inside and prints
``OK`` at the end; the test checks the return code and that line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from varprop._src.core import normalizers as normalization

# The directory holding the varprop this pytest process imports: the subprocess must
# import the same one.
ROOT = Path(normalization.__file__).parents[3]

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import flax.linen as nn
    from flax import nnx

    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")

    from varprop._src.core import normalizers as N
    from varprop._src.nn import norm_linen as VL
    from varprop._src.nn import norm_nnx as VN

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    D, R, C = 8, 8, 5  # devices, rows per device, features
    ALGORITHMS = ("stable", "fast")

    # Data from NumPy (cheaper to start than JAX's PRNG); each shard gets its own
    # location so that per-shard means differ.
    x_np = 4.0 + 3.0 * np.random.default_rng(0).standard_normal((D * R, C))
    x_np += np.repeat(np.arange(D), R)[:, None]
    x = jnp.asarray(x_np, jnp.float32)
    # Shard i holds i + 1 valid rows out of 8: unequal valid sizes.
    mask_np = np.broadcast_to((np.arange(R)[None, :] <= np.arange(D)[:, None]).reshape(-1, 1),
                              (D * R, C))
    mask = jnp.asarray(mask_np)
    scale = jnp.asarray(1.0 + 0.1 * np.arange(C), jnp.float32)
    bias = jnp.asarray(0.2 * np.arange(C), jnp.float32)
    rm0, rv0 = jnp.zeros(C), jnp.ones(C)
    # Linen variables built directly (no init pass needed).
    linen_vars = {"params": {"scale": scale, "bias": bias},
                  "batch_stats": {"mean": rm0, "var": rv0}}

    # Modules: varprop Linen and NNX, and Flax Linen (mean of per-device means).
    lin, nnx_parts, flx = {}, {}, {}
    for alg in ALGORITHMS:
        lin[alg] = VL.BatchNorm(use_running_average=False, axis_name="batch", momentum=0.9,
                                algorithm=alg)
        bn = VN.BatchNorm(C, axis_name="batch", momentum=0.9, algorithm=alg, rngs=nnx.Rngs(0))
        bn.scale[...], bn.bias[...] = scale, bias
        nnx_parts[alg] = nnx.split(bn)
        flx[alg] = nn.BatchNorm(use_running_average=False, axis_name="batch", momentum=0.9,
                                use_fast_variance=alg == "fast")
    nnx_states = {alg: nnx_parts[alg][1] for alg in ALGORITHMS}

    def triple(y, stats):
        return y, stats["mean"], stats["var"]

    def on_each_device(states, xs, ms):
        \"\"\"Every variant, on one shard; statistics shared over 'batch'.\"\"\"
        out = {}
        for alg in ALGORITHMS:
            for label, m in (("unmasked", None), ("masked", ms)):
                o = N.batch_norm(xs, scale, bias, rm0, rv0, train=True, mask=m, momentum=0.9,
                                 algorithm=alg, axis_name="batch")
                out[alg, "core", label] = (o.y, o.running_mean, o.running_var)
            y, upd = lin[alg].apply(linen_vars, xs, mask=ms, mutable=["batch_stats"])
            out[alg, "linen", "masked"] = triple(y, upd["batch_stats"])
            model = nnx.merge(nnx_parts[alg][0], states[alg])
            y = model(xs, mask=ms)
            out[alg, "nnx", "masked"] = (y, model.mean[...], model.var[...])
            for label, m in (("unmasked", jnp.ones_like(ms)), ("masked", ms)):
                y, upd = flx[alg].apply(linen_vars, xs, mask=m, mutable=["batch_stats"])
                out[alg, "flax", label] = triple(y, upd["batch_stats"])
        return out

    keys = [(a, impl, label) for a in ALGORITHMS for impl, label in
            (("core", "unmasked"), ("core", "masked"), ("linen", "masked"), ("nnx", "masked"),
             ("flax", "unmasked"), ("flax", "masked"))]
    out_specs = {k: (P("batch"), P(), P()) for k in keys}
    sharded = jax.jit(jax.shard_map(on_each_device, mesh=mesh,
                                    in_specs=(P(), P("batch"), P("batch")),
                                    out_specs=out_specs))(nnx_states, x, mask)

    @jax.jit
    def single_device(x, mask):
        \"\"\"The whole batch on one device: the reference.\"\"\"
        return {(alg, label): N.batch_norm(x, scale, bias, rm0, rv0, train=True, mask=m,
                                           momentum=0.9, algorithm=alg)
                for alg in ALGORITHMS for label, m in (("unmasked", None), ("masked", mask))}
    ref = single_device(x, mask)

    def close(a, b, what, rtol=2e-5, atol=2e-5):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol,
                                   err_msg=what)

    x64 = np.asarray(x, np.float64)  # the float32 data, exactly
    for alg in ALGORITHMS:
        for label in ("unmasked", "masked"):
            r = ref[alg, label]
            # The reference is the float64 NumPy statistics of the valid rows.
            keep = mask_np[:, 0] if label == "masked" else np.ones(D * R, bool)
            close(r.running_mean, 0.1 * x64[keep].mean(0), f"numpy mean {alg} {label}", 1e-5)
            close(r.running_var, 0.9 + 0.1 * x64[keep].var(0), f"numpy var {alg} {label}", 1e-5)
            # 1-3. varprop (core, Linen, NNX) with axis_name = the single-device result.
            for impl in ("core", "linen", "nnx"):
                if (alg, impl, label) not in sharded:
                    continue
                y, rm, rv = sharded[alg, impl, label]
                close(y, r.y, f"{impl} y {alg} {label}")
                close(rm, r.running_mean, f"{impl} running mean {alg} {label}")
                close(rv, r.running_var, f"{impl} running var {alg} {label}")

        # 4. Flax's mean of per-device means (flax#2417) agrees for equal shards ...
        y, rm, rv = sharded[alg, "flax", "unmasked"]
        close(rm, ref[alg, "unmasked"].running_mean, f"flax equal shards mean {alg}")
        close(rv, ref[alg, "unmasked"].running_var, f"flax equal shards var {alg}")
        #    ... but not for unequal ones: the checks above would fail for it.
        y, rm, rv = sharded[alg, "flax", "masked"]
        gap_mean = float(jnp.max(jnp.abs(rm - ref[alg, "masked"].running_mean)))
        gap_var = float(jnp.max(jnp.abs(rv - ref[alg, "masked"].running_var)))
        assert gap_mean > 0.05 and gap_var > 0.05, (alg, gap_mean, gap_var)
        #    It is exactly the mean of the per-shard means, i.e. that bug, not noise.
        k = mask_np[:, 0].reshape(D, R)
        per_shard = np.stack([x64.reshape(D, R, C)[i][k[i]].mean(0) for i in range(D)])
        close(rm, 0.1 * per_shard.mean(0), f"mean of means {alg}")
        print(alg, "mean-of-means gaps (running mean, running var):", gap_mean, gap_var)

    # 5. The batch-of-one check counts devices: one row on each of 8 devices is 8 values.
    def one_row(xs):
        return N.batch_norm(xs, None, None, rm0, rv0, train=True, axis_name="batch").y
    jax.jit(jax.shard_map(one_row, mesh=mesh, in_specs=P("batch"), out_specs=P("batch")))(x[:D])
    print("OK")
    """
)


def test_batchnorm_shard_map_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip().endswith("OK"), proc.stdout
