"""``SliceSamplerWithoutReplacement``: epochs that yield one slice of every stored trajectory
(see ``rlbuf.samplers.slice`` for the slice contract and ``_slice_base`` for what is shared).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlbuf import _xla
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers._slice_base import _SliceBase


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SliceWithoutReplacementState:
    """State of :class:`SliceSamplerWithoutReplacement`.

    - ``traj``: the boundary bookkeeping.
    - ``perm``: ``[L * capacity]`` int32, the epoch's order over trajectory items
      ``k = lane * capacity + j`` (the ``j``-th trajectory of the lane stored at the epoch's
      start, number ``epoch_first[lane] + j``); eligible items first.
    - ``pos``: items of the epoch already used; ``epoch_items``: eligible items of the epoch;
      ``epoch_first``: ``[L]`` first stored trajectory number per lane at the epoch's start;
      ``epoch``: epochs begun.
    """

    traj: trj.TrajectoryState
    perm: jax.Array
    pos: jax.Array
    epoch_items: jax.Array
    epoch_first: jax.Array
    epoch: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class SliceSamplerWithoutReplacement(_SliceBase):
    """Slices without replacement: each epoch yields one slice from every trajectory stored
    (and eligible: at least ``slice_len`` stored steps if ``strict_length``) when it began.

    Every batch holds ``num_slices`` distinct trajectories (a random permutation of the
    epoch's trajectories if ``shuffle``, storage order otherwise), each slice starting
    uniformly within its trajectory. Same arguments as :class:`SliceSampler`, plus:

    - ``drop_last=False``: the epoch's last batch may have fewer than ``num_slices`` slices;
      the missing ones are padding (zeros, ``info["mask"]`` False). ``drop_last=True``: such a
      remainder is skipped and a new epoch begins.
    - ``can_sample`` False (no eligible trajectory; ``drop_last=True`` with fewer than
      ``num_slices``): ``sample`` returns all padding and begins no epoch (TorchRL raises).
    - Adds mid-epoch: new trajectories wait for the next epoch; a trajectory overwritten (or
      shrunk below ``slice_len`` with ``strict_length``) before its turn gives an all-padding
      slice (``info["mask"]`` False). A new epoch starts once the previous is used up.
    - Beginning an epoch is O(lanes × capacity) (a permutation); other samples are
      O(num_slices × slice_len).
    """

    redraws = False  # a redraw would consume slices of the epoch: rejected items stay masked
    drop_last: bool = False
    shuffle: bool = True

    def init(self, layout):
        spec = self._spec(layout)
        z = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers, for donation)
        return SliceWithoutReplacementState(
            traj=trj.init(layout, spec),
            perm=jnp.arange(layout.size, dtype=jnp.int32),
            pos=z(),
            epoch_items=z(),
            epoch_first=jnp.zeros((layout.n_lanes,), jnp.int32),
            epoch=z(),
        )

    def on_write(self, ring, sstate, write, data):
        ts, _ = trj.update(ring, sstate.traj, self._spec(ring.layout), write, data)
        return dataclasses.replace(sstate, traj=ts)

    def _eligible_items(self, ring, s, ranges, n: int):
        lengths, _ = self._lengths_all(ring, s.traj, ranges)
        return (lengths >= (n if self.strict_length else 1)).reshape(-1)

    def _new_epoch(self, ring, s, ranges, key, n: int, n_slices: int):
        layout = ring.layout
        ok = self._eligible_items(ring, s, ranges, n)
        if self.shuffle:
            order = jax.random.permutation(key, layout.size).astype(jnp.int32)
        else:
            order = jnp.arange(layout.size, dtype=jnp.int32)
        # Stable partition: eligible items first, in (random) order.
        perm = order[jnp.argsort(~ok[order], stable=True)]
        new = SliceWithoutReplacementState(
            traj=s.traj,
            perm=perm,
            pos=jnp.zeros((), jnp.int32),
            epoch_items=jnp.sum(ok, dtype=jnp.int32),
            epoch_first=ranges.first,
            epoch=s.epoch + 1,
        )
        # An epoch that could not give one batch (can_sample False) is not begun.
        keep = ~self._exhausted(new, n_slices)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s)

    def sample(self, ring, s, key, batch_size: int):
        layout = ring.layout
        n_slices, n = self.shape(batch_size)
        ranges = trj.lane_ranges(ring, s.traj)
        k_perm, k_start = jax.random.split(key)
        need = self._exhausted(s, n_slices)
        # O(L × capacity) epoch start, at most once (rlbuf._xla.run_at_most_once: no copy of the
        # permutation on the samples that do not start an epoch).
        s = _xla.run_at_most_once(need, lambda c, r: self._new_epoch(ring, c, r, k_perm, n, n_slices), s,
                                   (ranges,))
        # Still exhausted: can_sample is False (no eligible trajectory, or fewer than num_slices
        # with drop_last); the new epoch was not kept, the batch is all padding (TorchRL raises).
        real = ~self._exhausted(s, n_slices)
        k = s.pos + jnp.arange(n_slices, dtype=jnp.int32)
        in_epoch = (k < s.epoch_items) & real
        item = jnp.where(in_epoch, s.perm[jnp.minimum(k, layout.size - 1)], 0)
        cap = layout.capacity
        lane = item // cap
        seq = s.epoch_first[lane] + item % cap
        # Still stored (not overwritten since the epoch began) and still long enough.
        stored = (seq - ranges.first[lane] >= 0) & (ranges.n_stored[lane] > 0)
        begin, end = trj.bounds(ring, s.traj, ranges, lane, seq)
        ok = in_epoch & stored & (end - begin >= (n if self.strict_length else 1))
        bits = jax.random.bits(k_start, (n_slices,), jnp.uint32)
        index, info = self._slices(ring, ranges, bits, lane, begin, end, ok, n)
        s = dataclasses.replace(s, pos=jnp.where(real, jnp.minimum(s.pos + n_slices, s.epoch_items), s.pos))
        return s, index, info

    def _exhausted(self, s, n_slices: int):
        """True when the epoch cannot give a batch: used up, or (``drop_last``) fewer than
        ``num_slices`` trajectories left."""
        left = s.epoch_items - s.pos
        return (left <= 0) | ((left < n_slices) & self.drop_last)

    def can_sample(self, ring, s, batch_size: int):
        n = self.shape(batch_size)[1]
        ranges = trj.lane_ranges(ring, s.traj)
        n_ok = jnp.sum(self._eligible_items(ring, s, ranges, n))
        n_slices = self.shape(batch_size)[0]
        return n_ok >= n_slices if self.drop_last else n_ok > 0
