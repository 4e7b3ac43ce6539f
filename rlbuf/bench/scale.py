"""Scale-out benchmark: a sharded collector and a sharded replay buffer on 1, 2 and 4 devices.

``python -m rlbuf.bench.scale [--quick]``. Each device count runs in its own subprocess with
``--xla_force_host_platform_device_count=D`` (the count is fixed when JAX starts). Measured:
frames/s of ``collect`` (CartPole, random policy, envs split over the devices), frames/s of
``add`` and sampled items/s of ``sample`` (uniform; ``batch_size`` split over the devices),
each jitted, compiled once and timed as the median of several calls. The reference column is
the 1-device run of the same sharded code, so the ratio is the speed-up's inverse (below 1:
faster than one device). Recorded, not asserted: forced host devices share the machine's
cores, so on a small CPU box the ratio mostly shows the sharding overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rlbuf.bench._timing import Row, print_rows

DEVICE_COUNTS = (1, 2, 4)


def _child(quick: bool) -> dict:
    import gymnax
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from rlbuf.bench._timing import time_fn
    from rlbuf.buffers.replay_buffer import ReplayBuffer
    from rlbuf.collectors.collector import Collector
    from rlbuf.collectors.sharded import shard_collector
    from rlbuf.scaling.sharding import shard
    from rlbuf.storages import LazyTensorStorage

    mesh = Mesh(np.array(jax.devices()), ("data",))
    n_envs, T = (32, 16) if quick else (64, 64)
    batch = 256 if quick else 1024
    env, params = gymnax.make("CartPole-v1")
    col = shard_collector(Collector(env, None, frames_per_batch=n_envs * T, num_envs=n_envs, env_params=params), mesh)
    srb = shard(ReplayBuffer(storage=LazyTensorStorage(n_envs * T * 8, ndim=2), batch_size=batch), mesh)
    collect = jax.jit(col.collect)
    add = jax.jit(srb.add)
    sample = jax.jit(lambda s, k: srb.sample(s, k)[1])
    cs = col.init(jax.random.key(0))
    cs, b = collect(cs, None)
    state = srb.init(b)
    for _ in range(8):  # fill the buffer
        cs, b = collect(cs, None)
        state = add(state, b)
    repeats = 3 if quick else 7
    frames = n_envs * T
    t_collect = time_fn(lambda s: collect(s, None)[1], cs, repeats=repeats)
    t_add = time_fn(add, state, b, repeats=repeats)
    t_sample = time_fn(sample, state, jax.random.key(1), repeats=repeats, number=5)
    return {
        "devices": jax.device_count(),
        "collect_us_per_frame": 1e6 * t_collect / frames,
        "add_us_per_frame": 1e6 * t_add / frames,
        "sample_us_per_item": 1e6 * t_sample / batch,
        "frames": frames,
        "batch": batch,
    }


def measure(devices: int, quick: bool) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "rlbuf.bench.scale", "--child"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=1800).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Row]:
    res = {d: measure(d, quick) for d in DEVICE_COUNTS}
    one = res[1]
    rows = []
    for d, r in res.items():
        for what, key, unit in (
            ("collect", "collect_us_per_frame", "frame"),
            ("add", "add_us_per_frame", "frame"),
            ("sample", "sample_us_per_item", "item"),
        ):
            per_s = 1e6 / r[key]
            rows.append(Row("scale", f"{what}, {d} device{'s' * (d > 1)}", "same code, 1 device", r[key], one[key],
                            unit, f"{per_s:,.0f} {unit}s/s"))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.quick)))
        return
    print_rows(run(args.quick), digits=3)


if __name__ == "__main__":
    main()
