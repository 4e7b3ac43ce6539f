"""``RandomSampler``: uniform sampling with replacement over every stored transition."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlbuf import _ring, _xla
from rlbuf.samplers.base import Sampler


@dataclasses.dataclass(frozen=True)
class RandomSampler(Sampler):
    """Each of the ``batch_size`` items is drawn independently and uniformly from the
    ``n_lanes * count`` stored transitions.

    Draws map uniform 32-bit words to ``[0, n)`` by multiply-shift (``rlbuf._xla.below``):
    each value within ``2**-32`` of ``1 / n`` at every ``n`` (``jax.random.randint`` is biased
    as ``n`` nears ``2**31``). Buffers of ``2**31`` transitions or more draw the lane and the
    time slot separately (every lane holds the same ``count`` slots, so that is uniform too).

    Empty buffer: ``can_sample`` is False and ``sample`` returns the zero-filled slot 0
    (never written data) with ``info["mask"]`` False.
    """

    def sample(self, ring, sstate, key, batch_size: int):
        count = jnp.maximum(ring.count, 1)
        # Written slots are [0, count) in every lane (see rlbuf._ring), so one integer
        # draw over lanes x count addresses the stored items without touching the cursor.
        if ring.layout.size <= _ring.MAX_FLAT:
            bits = jax.random.bits(key, (batch_size,), jnp.uint32)
            u = _xla.below(bits, count * ring.n_lanes)
            index = _ring.item_index(u, count, ring.lanes)
        else:  # lanes x count may pass int32: lane and slot apart
            bits = jax.random.bits(key, (2, batch_size), jnp.uint32)
            lane = _xla.below(bits[0], jnp.int32(ring.n_lanes))
            index = (*_ring.lane_index(lane, ring.lanes), _xla.below(bits[1], count))
        info = {"mask": jnp.broadcast_to(ring.count > 0, (batch_size,))}
        return sstate, index, info
