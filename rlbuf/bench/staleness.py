"""Staleness-aware sampling benchmark: ``python -m rlbuf.bench.staleness [--quick]``.

A full buffer (``ndim=1``, capacity 10k and 1M; leaves obs float32[8], action int32, reward
float32, next/done, policy_version int32) filled by 1000 adds of increasing policy versions,
so the ring holds 1000 version runs (the segment table's default size is 1024). Each
iteration of a jitted, donated ``lax.scan`` pushes a new learner version
(``set_policy_version``), adds 64 transitions stamped with it and samples 256: the state
changes every iteration, nothing can be hoisted.

Reference: the same loop with ``RandomSampler`` (the version push is a no-op there: the
stored versions are only data). Target: ``StalenessAwareSampler`` <= 1.5x ``RandomSampler``
at both capacities (its cost per sample does not grow with the capacity). A second row per
capacity samples only (no add). Compile time never counts; medians of interleaved repeats.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlbuf.bench._timing import Row, main_for, medians, threaded
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.staleness import StalenessAwareSampler, set_policy_version
from rlbuf.storages import LazyTensorStorage

BATCH, ADD, RUNS, MAX_STALENESS = 256, 64, 1000, 500


def transitions(key, n, version) -> dict:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "obs": jax.random.normal(k1, (n, 8), jnp.float32),
        "action": jax.random.randint(k2, (n,), 0, 4, jnp.int32),
        "reward": jax.random.normal(k3, (n,), jnp.float32),
        "next": {"done": jax.random.uniform(k4, (n,)) < 0.01},
        "collector": {"policy_version": jnp.broadcast_to(jnp.asarray(version, jnp.int32), (n,))},
    }


def _buffer(size: int, staleness: bool):
    sampler = StalenessAwareSampler(max_staleness=MAX_STALENESS) if staleness else RandomSampler()
    rb = ReplayBuffer(storage=LazyTensorStorage(size), sampler=sampler, batch_size=BATCH)
    chunk = size // RUNS
    add = jax.jit(rb.add, donate_argnums=0)
    state = rb.init(transitions(jax.random.key(0), 1, 0))
    for v in range(RUNS):  # 1000 adds, one version each
        state = add(state, transitions(jax.random.key(v), chunk, v))
    return rb, state


def _loop(rb, staleness: bool, with_add: bool, iters: int) -> Callable:
    def body(carry, key):
        state, version, acc = carry
        version = version + 1
        if staleness:
            state = set_policy_version(state, version)
        if with_add:
            state = rb.add(state, transitions(key, ADD, version))
        state, batch, info = rb.sample(state, key)
        x = sum(jnp.sum(v.astype(jnp.float32)) for v in jax.tree_util.tree_leaves(batch))
        return (state, version, acc + x), None

    def run(carry, key):
        return jax.lax.scan(body, carry, jax.random.split(key, iters))[0]

    return jax.jit(run, donate_argnums=0)


def run(quick: bool = False) -> list[Row]:
    iters = 100 if quick else 400
    repeats = 5 if quick else 11
    rows = []
    for size in (10_000, 1_000_000):
        for with_add in (True, False):
            fns, carries = {}, {}
            for name, st in (("staleness", True), ("random", False)):
                rb, state = _buffer(size, st)
                fns[name] = _loop(rb, st, with_add, iters)
                carries[name] = (state, jnp.asarray(RUNS, jnp.int32), jnp.zeros((), jnp.float32))
            t = medians(threaded(fns, carries, jax.random.key(1), repeats=repeats))
            us = {k: v / iters * 1e6 for k, v in t.items()}
            what = f"version push + add {ADD} + sample {BATCH}" if with_add else f"version push + sample {BATCH}"
            rows.append(Row("staleness", f"{what} from {size // 1000}k ({RUNS} version runs), in scan",
                            "rlbuf RandomSampler", us["staleness"], us["random"], "iter",
                            "target <= 1.5x" if with_add else ""))
    return rows


if __name__ == "__main__":
    main_for(run, __doc__.splitlines()[0])
