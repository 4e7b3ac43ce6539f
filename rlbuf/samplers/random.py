"""``RandomSampler``: uniform sampling with replacement over every stored transition."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlbuf import _ring
from rlbuf.samplers.base import Sampler


@dataclasses.dataclass(frozen=True)
class RandomSampler(Sampler):
    """Each of the ``batch_size`` items is drawn independently and uniformly from the
    ``n_lanes * count`` stored transitions.

    Empty buffer: ``can_sample`` is False and ``sample`` returns the zero-filled slot 0
    (never written data) with ``info["mask"]`` False.
    """

    def sample(self, ring, sstate, key, batch_size: int):
        n_items = ring.count * ring.n_lanes
        # Written slots are [0, count) in every lane (see rlbuf._ring), so one integer
        # draw over lanes x count addresses the stored items without touching the cursor.
        u = jax.random.randint(key, (batch_size,), 0, jnp.maximum(n_items, 1), dtype=jnp.int32)
        index = _ring.item_index(u, jnp.maximum(ring.count, 1), ring.lanes)
        info = {"mask": jnp.broadcast_to(ring.count > 0, (batch_size,))}
        return sstate, index, info
