"""A width sweep with its seeds sharded over 8 (host-simulated) devices.

``--xla_force_host_platform_device_count`` only takes effect before JAX initializes its
backends, and other test modules import JAX first in the same pytest process, so the check
runs in a fresh Python subprocess (the script below): it runs the same sweep sharded over 8
devices and on 1 device, asserts inside, and prints ``OK`` at the end.

What it checks: (a) the 8-device results equal the 1-device ones (all seeds vmapped on one
device at one width, in chunks of 2 under ``lax.map`` at the other) to float32 tolerance; (b) each width's output arrays are
sharded over the 8 devices along the seed axis: a ``NamedSharding`` on the ``"seed"`` mesh
axis, 8 addressable shards on 8 distinct devices, shard i holding seed i's rows.

Tolerance: every seed runs the same float32 operations on every layout, but XLA may pick
different kernels (a vmapped batch of 8 against one seed per device), which reorders
sums: relative differences of a few float32 ulps per operation, ~1e-6 after a few steps. The
check allows 1e-5 of each layer's coordinate size, absolutely, for both the activations and
their changes (a change is a difference of two activations, so its error is of the
activation's size, not its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from varprop._src import sweep

ROOT = Path(sweep.__file__).parents[2]

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")

    from varprop._src.sweep import (
        SEED_AXIS, mlp_family, seed_keys, seed_mesh, width_program, width_sweep,
    )

    devices = jax.devices()
    assert len(devices) == 8, devices
    assert seed_mesh(6).devices.size == 6 and seed_mesh(7).devices.size == 7
    assert seed_mesh(8, devices[:1]).devices.size == 1

    fam = mlp_family(hidden_layers=2, d_in=8, d_out=1, batch=16)
    widths, seeds, steps, lr = (16, 32), 8, 2, 1e-2
    multi = width_sweep(fam, widths, "muP", "adam", learning_rate=lr, steps=steps,
                        seeds=seeds, seed=3)
    assert multi.devices == 8

    # (a) the same numbers on one device: vmapped at the first width, in chunks of 2 seeds
    # (lax.map) at the second
    one = seed_mesh(seeds, devices[:1])
    keys = jax.device_put(seed_keys(3, seeds), devices[0])
    for i, (n, chunk) in enumerate(zip(widths, (None, 2))):
        prog = width_program(fam, n, "muP", "adam", learning_rate=lr, steps=steps, mesh=one,
                             base_width=widths[0], seed_chunk=chunk)
        single = [np.asarray(a, np.float64) for a in prog(keys)]
        assert len(prog(keys)[0].addressable_shards) == 1
        scale = multi.activation[i].max(axis=1, keepdims=True)  # each layer's size, per seed
        for name, got in zip(("activation", "update"), single):
            diff = np.abs(getattr(multi, name)[i] - got)
            assert np.all(diff <= 1e-5 * scale), (n, name, float((diff / scale).max()))
    scale = multi.activation.max(axis=2, keepdims=True)
    assert np.all(multi.update[:, :, 1:] > 1e-3 * scale)  # the steps did move the layers

    # (b) the outputs are sharded over the 8 devices along the seeds
    for i, n in enumerate(widths):
        for j, arr in enumerate(multi.arrays[n]):
            sh = arr.sharding
            assert isinstance(sh, NamedSharding), sh
            assert sh.mesh.devices.size == 8 and sh.spec[0] == SEED_AXIS, sh
            assert arr.shape == (seeds, steps + 1, len(fam.layers)), arr.shape
            shards = arr.addressable_shards
            assert len(shards) == 8 and len({s.device for s in shards}) == 8
            for s in shards:
                k = s.index[0].start
                assert s.data.shape == (1, steps + 1, len(fam.layers)), s.data.shape
                host = np.asarray(s.data, np.float64)[0]
                ref = (multi.activation, multi.update)[j][i, k]
                assert np.array_equal(host, ref.astype(np.float32).astype(np.float64))
    print("OK")
    """
)


def test_sweep_sharded_over_8_devices_matches_one_device():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout
