"""Consume-once bookkeeping (``consume_after_n_samples=n`` of ``RandomSampler`` and
``SamplerWithoutReplacement``): how often each stored item was returned, and which are gone.

An item returned ``n`` times is *consumed*: never returned again and no longer counted by
``num_stored`` / ``len(state)`` / ``can_sample``, until a write to its slot stores a new item
there (count 0). Writes keep rlbuf's ring order (the oldest slot is overwritten first,
consumed or not); TorchRL instead reuses consumed slots before advancing its writer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.samplers import capabilities


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ConsumeState(capabilities.Consuming):
    """- ``inner``: the sampler's own state (``()`` for ``RandomSampler``);
    - ``counts``: int32 ``[n_lanes * capacity]``, times each slot's item was returned since it
      was written (flat slot ``lane * capacity + t``);
    - ``n_consumed``: int32 ``[]``, written slots whose item is consumed (``counts >= n``)."""

    inner: Any
    counts: jax.Array
    n_consumed: jax.Array

    def consumed(self):
        return jnp.sum(self.n_consumed)


def check_n(name: str, n) -> None:
    """Raise unless ``n`` (``consume_after_n_samples``) is None or an int >= 1."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: consume_after_n_samples must be None or an int >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"{name}: consume_after_n_samples must be None or an int >= 1, got {n}")


def init(layout, inner) -> ConsumeState:
    return ConsumeState(inner=inner, counts=jnp.zeros((layout.size,), jnp.int32), n_consumed=jnp.zeros((), jnp.int32))


def on_write(ring, cs: ConsumeState, write, n: int) -> ConsumeState:
    """Slots the write filled hold new items: their counts restart at 0."""
    flat, valid = ring.lane_slots(write.positions)
    size = ring.layout.size
    flat = jnp.where(valid, flat, size)
    old = cs.counts.at[flat].get(mode="fill", fill_value=0)
    gone = jnp.sum((old >= n) & valid, dtype=jnp.int32)
    return dataclasses.replace(cs, counts=cs.counts.at[flat].set(0, mode="drop"), n_consumed=cs.n_consumed - gone)


def live(ring, cs: ConsumeState, n: int):
    """Bool ``[n_lanes * capacity]``: written slots whose item is not consumed."""
    cap = ring.capacity
    written = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32) < ring.count, (ring.n_lanes, cap)).reshape(-1)
    return written & (cs.counts < n)


def n_live(ring, cs: ConsumeState):
    """int32: stored items not consumed."""
    return ring.count * ring.n_lanes - cs.n_consumed


def mark(ring, cs: ConsumeState, index: tuple, mask, n: int) -> ConsumeState:
    """Count one return of each item at ``index`` where ``mask`` (the items must be distinct)."""
    flat = jnp.where(mask, ring.flat(index), ring.layout.size).reshape(-1)
    old = cs.counts.at[flat].get(mode="fill", fill_value=0)
    newly = jnp.sum((old + 1 == n) & mask.reshape(-1), dtype=jnp.int32)
    return dataclasses.replace(cs, counts=cs.counts.at[flat].add(1, mode="drop"), n_consumed=cs.n_consumed + newly)


def sample_distinct(ring, cs: ConsumeState, key, batch_size: int, n: int):
    """``batch_size`` distinct live items, uniformly (TorchRL's ``ConsumingSampler``: a random
    permutation of the live items, cut to the batch); missing items (fewer live than
    ``batch_size``) are padding with ``mask`` False. O(capacity) per call (a top-k of random
    scores over the slots). Returns ``(cs, index, mask)`` with the returns counted."""
    size = ring.layout.size
    score = jnp.where(live(ring, cs, n), jax.random.uniform(key, (size,)), -1.0)
    k = min(batch_size, size)
    top, flat = jax.lax.top_k(score, k)
    mask = top >= 0
    if k < batch_size:
        mask = jnp.concatenate([mask, jnp.zeros((batch_size - k,), bool)])
        flat = jnp.concatenate([flat, jnp.zeros((batch_size - k,), flat.dtype)])
    flat = jnp.where(mask, flat, 0).astype(jnp.int32)
    index = tuple(i.astype(jnp.int32) for i in ring.unflatten(flat))
    return mark(ring, cs, index, mask, n), index, mask
