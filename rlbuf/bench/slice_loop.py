"""The slice training loop at three capacities: ``python -m rlbuf.bench.slice_loop [--quick]``.

The pattern of an off-policy sequence learner's loop, inside one ``jax.jit`` with the state
donated: every iteration ``add``s a ``[4, 8]`` batch (4 env lanes, 8 steps, trajectory ids as
a collector writes them: episodes of random length, mean 100, ids fresh at every episode
start and unique across lanes), then samples 32 slices of 10 steps with
``SliceSampler(num_slices=32, traj_key=("collector", "traj_ids"))`` (strict: a slice never
crosses an episode, the write head or an unwritten slot), 200 iterations per timed call.
Storage ``LazyTensorStorage(capacity, ndim=2)``, full before timing, at 10k, 100k and 1M
transitions (10k and 100k with ``--quick``).

Reference: flashbax's trajectory buffer (``add_batch_size=4``, ``sample_batch_size=32``,
``sample_sequence_length=10``, ``period=1``) in the same scan with its own add; it ignores
episode boundaries, so it does less. Target: ratio <= 1.0 at every capacity.

Each side threads its own donated state; repeats interleaved; medians of process CPU time
(``time.process_time``: all of XLA's threads, far less sensitive to other processes on a shared
machine than wall time); the note adds the min-of-repeats ratio and the wall-time ratios of a
second interleaved run (on a quiet machine the better measure: CPU time also counts XLA:CPU
splitting a kernel over its threads); compile time never counts.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.bench._timing import Row, main_for, threaded
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

LANES, STEPS, NUM_SLICES, SLICE_LEN, MEAN_EP, ITERS = 4, 8, 32, 10, 100, 200
TRAJ = ("collector", "traj_ids")


def stream(seed: int, steps: int, first_id: int = 0) -> dict:
    """``[LANES, steps]`` transitions whose ``("collector", "traj_ids")`` start a new id (a
    global counter, strided by lane so lanes never share one) at random episode starts."""
    rng = np.random.default_rng(seed)
    start = rng.random((LANES, steps)) < 1.0 / MEAN_EP
    ids = first_id + LANES * np.cumsum(start, axis=1) + np.arange(LANES)[:, None]
    return {
        "obs": rng.standard_normal((LANES, steps, 8)).astype(np.float32),
        "action": rng.integers(0, 4, (LANES, steps)).astype(np.int32),
        "next": {"reward": rng.standard_normal((LANES, steps)).astype(np.float32)},
        "collector": {"traj_ids": ids.astype(np.int32)},
    }


def _scan(add, sample):
    def body(carry, xs):
        state, key, acc = carry
        key, sub = jax.random.split(key)
        state, batch = sample(add(state, xs), sub)
        acc = acc + sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(batch))
        return (state, key, acc), None

    return jax.jit(lambda carry, adds: jax.lax.scan(body, carry, adds)[0], donate_argnums=0)


def rows_for(capacity: int, repeats: int) -> list[Row]:
    per_lane = capacity // LANES
    fill = stream(0, per_lane)
    last = int(fill["collector"]["traj_ids"].max()) + 1
    adds = stream(1, ITERS * STEPS, first_id=last)
    # [ITERS, LANES, STEPS]: iteration i adds steps [i * STEPS, (i + 1) * STEPS) of every lane
    adds = jax.tree_util.tree_map(lambda x: np.moveaxis(x.reshape(LANES, ITERS, STEPS, *x.shape[2:]), 1, 0), adds)
    rb = ReplayBuffer(storage=LazyTensorStorage(capacity, ndim=2),
                      sampler=SliceSampler(num_slices=NUM_SLICES, traj_key=TRAJ), batch_size=NUM_SLICES * SLICE_LEN)

    def ours_sample(s, k):
        s, batch, _ = rb.sample(s, k)
        return s, batch

    state = jax.jit(rb.add, donate_argnums=0)(rb.init(fill), fill)
    state, _, _ = jax.jit(rb.sample, donate_argnums=0)(state, jax.random.key(1))
    fns = {"rlbuf": _scan(rb.add, ours_sample)}
    carries = {"rlbuf": (state, jax.random.key(3), jnp.zeros((), jnp.float32))}
    try:
        import flashbax as fbx
    except ImportError as e:  # pragma: no cover - depends on the environment
        fbx, err = None, e
    if fbx is not None:
        fb = fbx.make_trajectory_buffer(add_batch_size=LANES, sample_batch_size=NUM_SLICES,
                                        sample_sequence_length=SLICE_LEN, period=1, min_length_time_axis=SLICE_LEN,
                                        max_length_time_axis=per_lane)
        fstate = jax.jit(fb.add, donate_argnums=0)(fb.init(jax.tree_util.tree_map(lambda x: x[0, 0], fill)), fill)
        fns["flashbax"] = _scan(fb.add, lambda s, k: (s, fb.sample(s, k).experience))
        carries["flashbax"] = (fstate, jax.random.key(3), jnp.zeros((), jnp.float32))
    adds = jax.tree_util.tree_map(jnp.asarray, adds)
    t = threaded(fns, carries, adds, repeats=repeats, clock=time.process_time)
    wall = threaded(fns, carries, adds, repeats=repeats)
    us = {k: v[0] / ITERS * 1e6 for k, v in t.items()}
    case = (f"loop: add {LANES}x{STEPS} (traj ids) + slice {NUM_SLICES}x{SLICE_LEN} strict, "
            f"{capacity // 1000}k ndim=2, in scan")
    if fbx is None:
        return [Row("slice loop", case, "flashbax trajectory buffer", us["rlbuf"], None, "iter",
                    f"skipped flashbax: not importable ({err})")]
    a, b = t["rlbuf"][1] / ITERS * 1e6, t["flashbax"][1] / ITERS * 1e6
    w, wmin = wall["rlbuf"][0] / wall["flashbax"][0], wall["rlbuf"][1] / wall["flashbax"][1]
    return [Row("slice loop", case, "flashbax trajectory buffer (ignores episodes)", us["rlbuf"], us["flashbax"],
                "iter", f"target ratio <= 1.0; CPU time; min-of-repeats {a:.1f} vs {b:.1f} µs ({a / b:.2f}×); "
                f"wall time {w:.2f}× (min {wmin:.2f}×)")]


SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (10_000, 100_000)


def run(quick: bool = False) -> list[Row]:
    sizes = QUICK_SIZES if quick else SIZES
    return [r for c in sizes for r in rows_for(c, 5 if quick else 15)]


if __name__ == "__main__":
    main_for(run, "rlbuf slice training-loop benchmark")
