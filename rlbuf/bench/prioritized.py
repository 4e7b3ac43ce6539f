"""Prioritized-replay benchmark: ``python -m rlbuf.bench.prioritized [--quick]``.

Each iteration of a jitted, donated ``lax.scan`` samples 256 transitions from a full buffer
and writes new priorities for them (``update_priority``), so the tree changes every
iteration and XLA cannot hoist anything out. Leaves: obs float32[8], action int32, reward
float32, next/done. Capacities 10k and 1M (``ndim=1``).

References, each in its own scan over the same iterations, repeats interleaved:

- flashbax's prioritised flat buffer (``make_prioritised_flat_buffer``: ``sample`` +
  ``set_priorities``; it computes probabilities, not importance weights). Target at 1M:
  <= 100 µs per iteration on 2 CPU cores.
- rlbuf's ``PrioritizedSampler`` with other tree branching factors (2, 4, 16), to show the
  effect of the number of sequential levels (ratios against the default, 8).

Compile time never counts; medians of interleaved repeats.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlbuf.bench._timing import Row, main_for, medians, threaded
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import BRANCHING, PrioritizedSampler
from rlbuf.storages import LazyTensorStorage

BATCH = 256
ALPHA, BETA = 0.6, 0.4


def transitions(key, n) -> dict:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "obs": jax.random.normal(k1, (n, 8), jnp.float32),
        "action": jax.random.randint(k2, (n,), 0, 4, jnp.int32),
        "reward": jax.random.normal(k3, (n,), jnp.float32),
        "next": {"done": jax.random.uniform(k4, (n,)) < 0.01},
    }


def scan_loop(step: Callable, iters: int) -> Callable:
    """Jitted, donated scan of ``iters`` ``(state, acc) = step(state, key)`` iterations."""

    def body(carry, key):
        state, acc = carry
        state, x = step(state, key)
        return (state, acc + x), None

    def run(carry, key):
        return jax.lax.scan(body, carry, jax.random.split(key, iters))[0]

    return jax.jit(run, donate_argnums=0)


def _checksum(batch) -> jax.Array:
    return sum((jnp.sum(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(batch)), jnp.zeros((), jnp.float32))


def filled(size: int, branching: int):
    sampler = PrioritizedSampler(size, ALPHA, BETA, branching=branching)
    rb = ReplayBuffer(storage=LazyTensorStorage(size), sampler=sampler, batch_size=BATCH)
    data = transitions(jax.random.key(0), size)
    state = jax.jit(rb.add, donate_argnums=0)(rb.init(data), data)

    def step(state, key):
        k1, k2 = jax.random.split(key)
        state, batch, info = rb.sample(state, k1)
        prio = jnp.abs(batch["reward"]) + jax.random.uniform(k2, (BATCH,))
        state = rb.update_priority(state, info["index"], prio)
        return state, _checksum(batch) + jnp.sum(info["weight"])

    return state, step


def _flashbax(fbx, size: int):
    adds = 1000
    fb = fbx.make_prioritised_flat_buffer(max_length=size, min_length=BATCH, sample_batch_size=BATCH,
                                          add_sequences=True, add_batch_size=adds, priority_exponent=ALPHA)
    data = transitions(jax.random.key(0), size)
    state = fb.init(jax.tree_util.tree_map(lambda x: x[0], data))
    state = jax.jit(fb.add, donate_argnums=0)(
        state, jax.tree_util.tree_map(lambda x: x.reshape(adds, size // adds, *x.shape[1:]), data))

    def step(state, key):
        k1, k2 = jax.random.split(key)
        s = fb.sample(state, k1)
        batch = s.experience.first
        prio = jnp.abs(batch["reward"]) + jax.random.uniform(k2, (BATCH,))
        state = fb.set_priorities(state, s.indices, prio)
        return state, _checksum(batch) + jnp.sum(s.probabilities)

    return state, step


def run(quick: bool = False) -> list[Row]:
    iters = 100 if quick else 500
    repeats = 5 if quick else 11
    try:
        import flashbax as fbx
    except ImportError as e:  # pragma: no cover - depends on the environment
        fbx, fbx_err = None, e
    rows = []
    for size in (10_000, 1_000_000):
        fns, carries = {}, {}
        branchings = (BRANCHING,) if quick and size < 1_000_000 else (BRANCHING, 2, 4, 16)
        for b in branchings:
            state, step = filled(size, b)
            fns[f"b{b}"] = scan_loop(step, iters)
            carries[f"b{b}"] = (state, jnp.zeros((), jnp.float32))
        if fbx is not None:
            state, step = _flashbax(fbx, size)
            fns["flashbax"] = scan_loop(step, iters)
            carries["flashbax"] = (state, jnp.zeros((), jnp.float32))
        t = medians(threaded(fns, carries, jax.random.key(1), repeats=repeats))
        us = {k: v / iters * 1e6 for k, v in t.items()}
        case = f"sample {BATCH} + update_priority from {size // 1000}k, in scan"
        ours = us[f"b{BRANCHING}"]
        if fbx is not None:
            rows.append(Row("prioritized", case, "flashbax prioritised flat buffer", ours, us["flashbax"], "iter",
                            "target <= 100 us/iter at 1M" if size >= 1_000_000 else ""))
        else:
            rows.append(Row("prioritized", case, "flashbax prioritised flat buffer", ours, None, "iter",
                            f"skipped flashbax: not importable ({fbx_err})"))
        for b in branchings[1:]:
            rows.append(Row("prioritized", f"{case}, branching {b}", f"rlbuf branching {BRANCHING} (default)",
                            us[f"b{b}"], ours, "iter", "tree width vs sequential levels"))
    return rows


if __name__ == "__main__":
    main_for(run, __doc__.splitlines()[0])
