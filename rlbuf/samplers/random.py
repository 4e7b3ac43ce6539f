"""``RandomSampler``: uniform sampling with replacement over every stored transition."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from rlbuf import _ring, _xla
from rlbuf.samplers import _consume
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

    Args:
      consume_after_n_samples: ``n``: an item returned ``n`` times is consumed: never
        returned again, no longer counted by ``num_stored`` / ``len`` / ``can_sample``, until
        a write replaces it (TorchRL's ``consume_after_n_samples`` / ``ConsumingSampler``,
        see ``rlbuf.samplers._consume``). The items of one batch are then distinct (a
        uniform random subset of the live items, as TorchRL); with fewer live items than
        ``batch_size`` the rest is padding (``info["mask"]`` False); ``can_sample`` is True
        while any item is live. Costs O(capacity) per ``sample``. ``None``: no consumption.
    """

    consume_after_n_samples: Optional[int] = None

    def __post_init__(self):
        _consume.check_n(type(self).__name__, self.consume_after_n_samples)

    @property
    def pads(self):  # consume-once batches pad when fewer items are live than batch_size
        return self.consume_after_n_samples is not None

    @property
    def redraws(self):  # a redraw would consume items
        return self.consume_after_n_samples is None

    def init(self, layout):
        return () if self.consume_after_n_samples is None else _consume.init(layout, ())

    def on_write(self, ring, sstate, write, data):
        if self.consume_after_n_samples is None:
            return sstate
        return _consume.on_write(ring, sstate, write, self.consume_after_n_samples)

    def can_sample(self, ring, sstate, batch_size: int):
        if self.consume_after_n_samples is None:
            return ring.count > 0
        return _consume.n_live(ring, sstate) > 0

    def sample(self, ring, sstate, key, batch_size: int):
        if self.consume_after_n_samples is not None:
            sstate, index, mask = _consume.sample_distinct(ring, sstate, key, batch_size, self.consume_after_n_samples)
            return sstate, index, {"mask": mask}
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
