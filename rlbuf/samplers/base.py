"""The sampler interface every sampler implements (uniform, without replacement, slice,
prioritized, ...). Samplers plug in without touching the buffer core.

A sampler is a frozen, hashable object whose methods are pure functions of explicit state.
Every hook that runs on data receives ``ring``, the buffer's read-only ``rlbuf._ring.Ring``
view (``cursor``, ``count``, ``added``, static ``layout``), and the sampler's own state
``sstate``; a sampler keeps no copy of the ring's counters.

- ``check(layout, batch_size)``: raise on impossible static settings (called by ``init``);
- ``init(layout) -> sstate``: its own state pytree, kept in ``BufferState.sampler``;
- ``on_write(ring, sstate, write, data) -> sstate``: told which slots each ``add`` filled
  (``rlbuf.writers.WriteInfo``; ``ring`` is the ring after the write) with the written data,
  e.g. to track trajectory boundaries or give new slots the maximum priority;
- ``sample(ring, sstate, key, batch_size) -> (sstate, index, info)``: ``index`` is a tuple
  ``(*lane_idx, t)`` of int32 arrays of the output batch shape (``[batch_size]``, or
  ``[num_slices, slice_len]`` for slices) locating each item in storage; ``info`` a dict of
  extra arrays (``"mask"``, ``"weight"``, ...);
- ``postprocess(ring, batch, info) -> batch``: edits the gathered batch (default: zero
  the items whose ``info["mask"]`` is False when ``pads`` is True);
- ``can_sample(ring, sstate, batch_size) -> bool array``;
- ``update_priority(ring, sstate, index, priority) -> sstate``: prioritized samplers only;
  entries whose ``index`` is not a written slot (e.g. a time index of -1) must be ignored:
  ``rlbuf.shard`` and ``PerWorkerReplayBuffer`` mark other groups' entries that way;
- ``split(n_groups, *, ndim, batch_size) -> Sampler``: the sampler each of ``n_groups`` lane
  groups runs (``rlbuf.shard``, ``PerWorkerReplayBuffer``) when the buffer's ``batch_size``
  is split evenly; raise if the sampler cannot be split so (default: itself);
- ``requires``: guarantees needed from the writer (``rlbuf.writers.base``, e.g.
  ``"time_order"``), checked by ``ReplayBuffer.init``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp


def _mask_leaf(x, mask):
    m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, jnp.zeros((), x.dtype))


def zero_masked(batch: Any, mask) -> Any:
    """Zero every leaf ``[*mask.shape, ...]`` where ``mask`` is False."""
    return jax.tree_util.tree_map(lambda x: _mask_leaf(x, mask), batch)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Base class with the default behaviour of each hook."""

    #: True if ``sample`` can return padding (``info["mask"]`` False) that must be zeroed.
    pads: ClassVar[bool] = False
    #: Guarantees this sampler needs from the writer (see ``rlbuf.writers.base``).
    requires: ClassVar[frozenset] = frozenset()

    def check(self, layout, batch_size: int) -> None:
        pass

    def init(self, layout) -> Any:
        return ()

    def on_write(self, ring, sstate, write, data) -> Any:
        return sstate

    def sample(self, ring, sstate, key, batch_size: int):
        raise NotImplementedError

    def postprocess(self, ring, batch, info):
        if self.pads and "mask" in info:
            return zero_masked(batch, info["mask"])
        return batch

    def can_sample(self, ring, sstate, batch_size: int):
        return ring.count > 0

    def update_priority(self, ring, sstate, index, priority):
        raise TypeError(f"{type(self).__name__} has no priorities; use a prioritized sampler")

    def split(self, n_groups: int, *, ndim: int, batch_size: int) -> "Sampler":
        return self
