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
- ``postprocess(ring, batch, info) -> batch``: edits the gathered batch (default: none);
  items whose ``info["mask"]`` is False arrive zeroed (``ReplayBuffer.sample`` zeroes them,
  once, before this hook and the sample-time stages);
- ``can_sample(ring, sstate, batch_size) -> bool array``;
- ``update_priority(ring, sstate, index, priority) -> sstate``: prioritized samplers only;
  entries whose ``index`` is not a written slot (e.g. a time index of -1) must be ignored:
  ``rlbuf.shard`` and ``PerWorkerReplayBuffer`` mark other groups' entries that way;
- ``split(n_groups, *, ndim, batch_size) -> Sampler``: the sampler each of ``n_groups`` lane
  groups runs (``rlbuf.shard``, ``PerWorkerReplayBuffer``) when the buffer's ``batch_size``
  is split evenly; raise if the sampler cannot be split so (default: itself);
- ``requires``: guarantees needed from the writer (``rlbuf.writers.base``, e.g.
  ``"time_order"``), checked by ``ReplayBuffer.init``.

The storage seam: a storage may hold items it cannot return exactly (``Storage.valid``, e.g.
``compact_next`` items whose final observation left the table). ``ReplayBuffer.sample`` calls
``draw(ring, sstate, key, batch_size, valid)``, which runs ``sample`` and, while a *row* of
the draw (an item, or a whole slice: the first axis of ``index``) holds a real step that
``valid`` rejects, tells the sampler (``exclude``) and redraws those rows with fresh keys, at
most ``MAX_REDRAWS`` times. The result is the sampler's own distribution conditioned on
containing no rejected item (uniform over the valid items; for slices, over the slices that
avoid them; for prioritized samplers, ``p_i`` over the valid items). Samplers whose draws
are not independent (without replacement: a redraw would consume items of the epoch) set
``redraws = False``: their rejected items stay masked (``info["mask"]`` False, zeros).

- ``exclude(ring, sstate, index, bad) -> sstate``: told that the items at ``index`` where
  ``bad`` is True cannot be returned; default: nothing (prioritized samplers zero their
  priority so the items drop out of the tree's mass).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional

import jax
import jax.numpy as jnp

#: Rounds of redraws of rows holding items the storage cannot return (``Sampler.draw``).
#: With a fraction ``q`` of such rows, a row is still bad after them with probability
#: ``q ** (MAX_REDRAWS + 1)``; it is then masked (zeros, ``info["mask"]`` False), never wrong.
MAX_REDRAWS = 16


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
    #: True if ``sample`` may be called again with another key to redraw rows (independent
    #: draws); False for samplers without replacement (see the module docstring).
    redraws: ClassVar[bool] = True

    def check(self, layout, batch_size: int) -> None:
        pass

    def init(self, layout) -> Any:
        return ()

    def on_write(self, ring, sstate, write, data) -> Any:
        return sstate

    def sample(self, ring, sstate, key, batch_size: int):
        raise NotImplementedError

    def exclude(self, ring, sstate, index: tuple, bad) -> Any:
        return sstate

    def draw(self, ring, sstate, key, batch_size: int, valid: Optional[Callable] = None):
        """``sample``, with the rows holding items ``valid(index)`` (bool ``[*S]``, or ``None``:
        all valid) rejects redrawn (see the module docstring); ``valid=None`` or
        ``redraws=False``: plain ``sample``."""
        sstate, index, info = self.sample(ring, sstate, key, batch_size)
        if valid is None or not self.redraws or valid(index) is None:  # None: every item valid
            return sstate, index, info

        def bad_rows(index, info):
            bad = ~valid(index)
            if "mask" in info:
                bad = bad & info["mask"]
            return bad, jnp.any(bad.reshape(bad.shape[0], -1), axis=1)

        def body(c):
            r, sstate, index, info, bad, rows = c
            sstate = self.exclude(ring, sstate, index, bad)
            sstate, index2, info2 = self.sample(ring, sstate, jax.random.fold_in(key, r), batch_size)

            def pick(new, old):  # the bad rows take the redraw
                return jnp.where(rows.reshape(rows.shape + (1,) * (old.ndim - 1)), new, old)

            index = tuple(map(pick, index2, index))
            info = jax.tree_util.tree_map(pick, info2, info)
            return (r + 1, sstate, index, info, *bad_rows(index, info))

        r0 = jnp.ones((), jnp.int32)
        c = (r0, sstate, index, info, *bad_rows(index, info))
        c = jax.lax.while_loop(lambda c: (c[0] <= MAX_REDRAWS) & jnp.any(c[5]), body, c)
        return c[1], c[2], c[3]

    def postprocess(self, ring, batch, info):
        return batch

    def can_sample(self, ring, sstate, batch_size: int):
        return ring.count > 0

    def update_priority(self, ring, sstate, index, priority):
        raise TypeError(f"{type(self).__name__} has no priorities; use a prioritized sampler")

    def split(self, n_groups: int, *, ndim: int, batch_size: int) -> "Sampler":
        return self
