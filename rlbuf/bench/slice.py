"""Slice-sampling benchmark: ``python -m rlbuf.bench.slice [--quick]``.

32 slices of 10 steps (``SliceSampler(num_slices=32, end_key=("next","done"))``,
``batch_size=320``) from a full ``LazyTensorStorage(capacity, ndim=2)`` with 4 lanes
(episodes of random length, mean 100), inside a jitted ``lax.scan`` whose every iteration adds
a ``[4, 1]`` batch and then samples, so the state changes each iteration (XLA cannot hoist the
sampling out). Leaves: obs float32[8], action int32, reward float32, next/done, next/truncated.

References, each in the same scan with its own add:
- flashbax's trajectory buffer (``add_batch_size=4, sample_batch_size=32,
  sample_sequence_length=10, period=1``), which ignores episode boundaries. Target <= 1.2×
  at 100k, and flat in capacity (10k, 100k, 1M).
- a bare-gather floor: rlbuf's own ``add`` then 32 random windows of 10 steps gathered with no
  boundary logic at all (the cost of the data movement alone).
- TorchRL's ``SliceSampler`` (``end_key``, ``LazyTensorStorage(100k, ndim=2)``): an eager
  Python loop of ``extend`` of a ``[4, 1]`` batch + ``sample``; skipped if torchrl is missing.

- ``PerWorkerReplayBuffer`` (4 workers of 4 lanes, one ``[4, 4, 1]`` add of every worker + 32
  slices per iteration, at 400k; 100k with ``--quick``) against a plain buffer of the same 16
  lanes (a ``[16, 1]`` add + 32 slices). Target <= 1.2.

Each side threads its own donated state; repeats are interleaved in one process; medians
(the note adds the min-of-repeats ratio, less sensitive to a shared machine's load); compile
time never counts.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.bench._timing import Row, main_for, threaded
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.slice import SliceSampler
from rlbuf.scaling.sharding import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

LANES = 4
NUM_SLICES = 32
SLICE_LEN = 10
MEAN_EP = 100


def transitions(key, shape) -> dict:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    done = jax.random.uniform(k4, shape) < 1.0 / MEAN_EP
    return {
        "obs": jax.random.normal(k1, (*shape, 8), jnp.float32),
        "action": jax.random.randint(k2, shape, 0, 4, jnp.int32),
        "reward": jax.random.normal(k3, shape, jnp.float32),
        "next": {"done": done, "truncated": jnp.zeros(shape, jnp.bool_)},
    }


def scan_loop(add: Callable, sample: Callable) -> Callable:
    """A jitted, donated scan: each iteration ``state = add(state, x)`` then ``sample``; the
    samples are summed into an accumulator so nothing is dead code."""

    def body(carry, xs):
        state, key, acc = carry
        key, sub = jax.random.split(key)
        state = add(state, xs)
        state, batch = sample(state, sub)
        acc = acc + sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(batch))
        return (state, key, acc), None

    return jax.jit(lambda carry, adds: jax.lax.scan(body, carry, adds)[0], donate_argnums=0)


def filled(size: int):
    rb = ReplayBuffer(
        storage=LazyTensorStorage(size, ndim=2),
        sampler=SliceSampler(num_slices=NUM_SLICES, end_key=("next", "done")),
        batch_size=NUM_SLICES * SLICE_LEN,
    )
    data = transitions(jax.random.key(0), (LANES, size // LANES))
    state = jax.jit(rb.add, donate_argnums=0)(rb.init(data), data)
    # The first sample builds the long-trajectory queue for slice_len (once).
    state, _, _ = jax.jit(rb.sample)(state, jax.random.key(1))
    return rb, state, data


def sample_ours(rb):
    def f(state, key):
        state, batch, _ = rb.sample(state, key)
        return state, batch

    return f


def _sample_floor(rb):
    def f(state, key):
        lay = state.layout
        k1, k2 = jax.random.split(key)
        lane = jax.random.randint(k1, (NUM_SLICES,), 0, lay.n_lanes, dtype=jnp.int32)
        t0 = jax.random.randint(k2, (NUM_SLICES,), 0, state.count - SLICE_LEN + 1, dtype=jnp.int32)
        flat = lane[:, None] * lay.capacity + (t0[:, None] + jnp.arange(SLICE_LEN, dtype=jnp.int32))
        batch = jax.tree_util.tree_map(
            lambda x: jnp.take(x.reshape(lay.size, *x.shape[2:]), flat, axis=0), state.storage
        )
        return state, batch

    return f


def scan_rows(quick: bool) -> list[Row]:
    iters = 50 if quick else 200
    repeats = 5 if quick else 15
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    try:
        import flashbax as fbx
    except ImportError as e:  # pragma: no cover - depends on the environment
        fbx, fbx_err = None, e
    rows = []
    for size in sizes:
        rb, state, data = filled(size)
        adds = transitions(jax.random.key(2), (iters, LANES, 1))
        fns = {"rlbuf": scan_loop(rb.add, sample_ours(rb)), "floor": scan_loop(rb.add, _sample_floor(rb))}
        copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)  # noqa: E731
        carries = {k: (copy(state), jax.random.key(3), jnp.zeros((), jnp.float32)) for k in fns}
        if fbx is not None:
            fb = fbx.make_trajectory_buffer(
                add_batch_size=LANES, sample_batch_size=NUM_SLICES, sample_sequence_length=SLICE_LEN, period=1,
                min_length_time_axis=SLICE_LEN, max_length_time_axis=size // LANES,
            )
            fstate = fb.init(jax.tree_util.tree_map(lambda x: x[0, 0], data))
            fstate = jax.jit(fb.add, donate_argnums=0)(fstate, data)

            def fb_sample(s, key, fb=fb):
                return s, fb.sample(s, key).experience

            fns["flashbax"] = scan_loop(fb.add, fb_sample)
            carries["flashbax"] = (fstate, jax.random.key(3), jnp.zeros((), jnp.float32))
        del state
        t = threaded(fns, carries, adds, repeats=repeats)
        case = f"add 4x1 + slice {NUM_SLICES}x{SLICE_LEN} from {size // 1000}k, ndim=2 (4 lanes), in scan"
        us = {k: v[0] / iters * 1e6 for k, v in t.items()}
        mins = {k: v[1] / iters * 1e6 for k, v in t.items()}

        def note(ref, text):
            a, b = mins["rlbuf"], mins[ref]
            return f"{text}; min-of-repeats {a:.1f} vs {b:.1f} µs ({a / b:.2f}×)"

        if fbx is not None:
            rows.append(Row("slice", case, "flashbax trajectory buffer (ignores episodes)", us["rlbuf"],
                            us["flashbax"], "iter", note("flashbax", "target ratio <= 1.2, flat in capacity")))
        else:
            rows.append(Row("slice", case, "flashbax trajectory buffer", us["rlbuf"], None, "iter",
                            f"skipped flashbax: not importable ({fbx_err})"))
        rows.append(Row("slice", case, "same add + bare window gather (no boundaries)", us["rlbuf"], us["floor"],
                        "iter", note("floor", "floor")))
    return rows


def torchrl_rows(quick: bool) -> list[Row]:
    size = 100_000
    try:
        import torch
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage as TLazy
        from torchrl.data import ReplayBuffer as TRB
        from torchrl.data import SliceSampler as TSlice
    except ImportError as e:
        return [Row("slice", f"slice {NUM_SLICES}x{SLICE_LEN} from {size // 1000}k ndim=2", "TorchRL SliceSampler",
                    float("nan"), None, "iter", f"skipped: torchrl not importable ({e})")]
    iters = 20 if quick else 60
    data = jax.tree_util.tree_map(np.asarray, transitions(jax.random.key(0), (LANES, size // LANES)))

    def td(d, shape):
        return TensorDict(
            {"obs": torch.as_tensor(d["obs"]), "action": torch.as_tensor(d["action"]),
             "reward": torch.as_tensor(d["reward"]),
             "next": TensorDict({"done": torch.as_tensor(d["next"]["done"]),
                                 "truncated": torch.as_tensor(d["next"]["truncated"])}, batch_size=shape)},
            batch_size=shape,
        )

    trb = TRB(storage=TLazy(size, ndim=2), sampler=TSlice(num_slices=NUM_SLICES, end_key=("next", "done")),
              batch_size=NUM_SLICES * SLICE_LEN)
    trb.extend(td(data, [LANES, size // LANES]))
    adds = jax.tree_util.tree_map(np.asarray, transitions(jax.random.key(2), (iters, LANES, 1)))
    steps = [td(jax.tree_util.tree_map(lambda x, i=i: x[i], adds), [LANES, 1]) for i in range(iters)]
    for s in steps[:3]:
        trb.extend(s)
        trb.sample()
    t0 = time.perf_counter()
    for s in steps:
        trb.extend(s)
        trb.sample()
    t_torch = (time.perf_counter() - t0) / iters

    rb, state, _ = filled(size)
    ours_iters = 200
    fn = scan_loop(rb.add, sample_ours(rb))
    jadds = transitions(jax.random.key(2), (ours_iters, LANES, 1))
    t = threaded({"rlbuf": fn}, {"rlbuf": (state, jax.random.key(3), jnp.zeros((), jnp.float32))}, jadds,
                  repeats=5 if quick else 11)
    return [Row("slice", f"add 4x1 + slice {NUM_SLICES}x{SLICE_LEN} from {size // 1000}k, ndim=2 (4 lanes)",
                "TorchRL SliceSampler (eager extend + sample)", t["rlbuf"][0] / ours_iters * 1e6, t_torch * 1e6, "iter",
                "rlbuf in a jitted scan; TorchRL eager (its normal use)")]


BURN_IN = 10


def burn_in_rows(quick: bool) -> list[Row]:
    """``SliceSampler(slice_len=10, burn_in=10)`` against plain slices of ``slice_len + burn_in
    = 20`` steps (the same data moved; target <= 1.2×): the cost of the front padding and the
    learning mask. Same scan as :func:`scan_rows` (add ``[4, 1]`` then sample)."""
    iters = 50 if quick else 200
    repeats = 5 if quick else 15
    size = 10_000 if quick else 100_000
    data = transitions(jax.random.key(0), (LANES, size // LANES))
    adds = transitions(jax.random.key(2), (iters, LANES, 1))
    fns, carries = {}, {}
    for name, slice_len, burn_in in (("burn", SLICE_LEN, BURN_IN), ("plain", SLICE_LEN + BURN_IN, 0)):
        sampler = SliceSampler(slice_len=slice_len, burn_in=burn_in, end_key=("next", "done"))
        # batch_size counts learning steps: 32 sequences of 10 + 10 against 32 slices of 20 (the
        # same data moved; until 2026-11-30 the plain side drew only 16 slices of 20)
        rb = ReplayBuffer(storage=LazyTensorStorage(size, ndim=2), sampler=sampler,
                          batch_size=NUM_SLICES * slice_len)
        state = jax.jit(rb.add, donate_argnums=0)(rb.init(data), data)
        fns[name] = scan_loop(rb.add, sample_ours(rb))
        carries[name] = (state, jax.random.key(3), jnp.zeros((), jnp.float32))
    # process CPU time: on the shared 2-core VM wall times vary by 2x with load
    t = threaded(fns, carries, adds, repeats=repeats, clock=time.process_time)
    us = {k: v[0] / iters * 1e6 for k, v in t.items()}
    a, b = (t[k][1] / iters * 1e6 for k in ("burn", "plain"))
    case = (f"add 4x1 + slice {NUM_SLICES}x({BURN_IN} burn-in + {SLICE_LEN}) from {size // 1000}k, ndim=2, in scan")
    return [Row("slice", case, f"plain slices of {SLICE_LEN + BURN_IN}", us["burn"], us["plain"], "iter",
                f"target ratio <= 1.2; process CPU time; min-of-repeats {a:.1f} vs {b:.1f} µs ({a / b:.2f}×)")]


def per_worker_rows(quick: bool) -> list[Row]:
    workers, size = 4, (100_000 if quick else 400_000)
    iters, repeats = (50, 5) if quick else (200, 11)

    def buffer(size):
        return ReplayBuffer(storage=LazyTensorStorage(size, ndim=2), batch_size=NUM_SLICES * SLICE_LEN,
                            sampler=SliceSampler(num_slices=NUM_SLICES, end_key=("next", "done")))

    def filled(rb, data, one):
        state = jax.jit(rb.add, donate_argnums=0)(rb.init(one), data)
        state, _, _ = jax.jit(rb.sample, donate_argnums=0)(state, jax.random.key(1))
        return jax.jit(rb.add, donate_argnums=0)(state, one)  # builds the slice queue (once)

    lanes = workers * LANES
    data = transitions(jax.random.key(0), (lanes, size // lanes))
    per_w = lambda x: x.reshape(workers, LANES, *x.shape[1:])  # noqa: E731
    plain, prb = buffer(size), PerWorkerReplayBuffer(buffer(size), workers)
    one = transitions(jax.random.key(4), (lanes, 1))
    states = {"plain": filled(plain, data, one)}
    pw_one = jax.tree_util.tree_map(per_w, one)
    pw_state = jax.jit(prb.add, donate_argnums=0)(prb.init(jax.tree_util.tree_map(lambda x: x[0], pw_one)),
                                                   jax.tree_util.tree_map(per_w, data))
    pw_state, _, _ = jax.jit(prb.sample, donate_argnums=0)(pw_state, jax.random.key(1))
    states["per_worker"] = jax.jit(prb.add, donate_argnums=0)(pw_state, pw_one)
    del data, pw_state
    adds = transitions(jax.random.key(2), (iters, lanes, 1))
    fns = {"plain": scan_loop(plain.add, sample_ours(plain)),
           "per_worker": scan_loop(lambda s, x: prb.add(s, jax.tree_util.tree_map(per_w, x)), sample_ours(prb))}
    carries = {k: (states[k], jax.random.key(3), jnp.zeros((), jnp.float32)) for k in fns}
    t = threaded(fns, carries, adds, repeats=repeats)
    us = {k: v[0] / iters * 1e6 for k, v in t.items()}
    mins = {k: v[1] / iters * 1e6 for k, v in t.items()}
    return [Row("slice", f"add {workers}x{LANES}x1 + slice {NUM_SLICES}x{SLICE_LEN} from {size // 1000}k, "
                f"PerWorkerReplayBuffer ({workers} workers x {LANES} lanes), in scan",
                f"plain buffer of the same {lanes} lanes", us["per_worker"], us["plain"], "iter",
                f"target ratio <= 1.2; min-of-repeats {mins['per_worker']:.1f} vs {mins['plain']:.1f} µs "
                f"({mins['per_worker'] / mins['plain']:.2f}×)")]


def run(quick: bool = False) -> list[Row]:
    return scan_rows(quick) + burn_in_rows(quick) + per_worker_rows(quick) + torchrl_rows(quick)


if __name__ == "__main__":
    main_for(run, "rlbuf slice-sampling benchmark")
