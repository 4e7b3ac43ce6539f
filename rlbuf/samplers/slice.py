"""Trajectory-aware slice samplers: ``SliceSampler`` (here) and
``SliceSamplerWithoutReplacement`` (``slice_without_replacement.py``, re-exported here).

A batch is ``[num_slices, slice_len, ...]``: ``num_slices`` runs of ``slice_len``
consecutive steps, each inside one stored trajectory (see ``rlbuf.samplers._trajectories``
for how trajectories are defined from ``traj_key`` / ``end_key`` and tracked at ``add``
time). A slice never crosses a trajectory boundary, the write head or an unwritten slot.

Cost: boundaries are maintained in ``on_write`` (O(lanes × steps added)); ``sample`` is
O(num_slices × slice_len + lanes), independent of the capacity (TorchRL rescans the whole
storage on every call).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlbuf import _xla
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers._slice_base import SliceState, _SliceBase, check_slice_config  # noqa: F401

#: ``on_write`` computes each step's offset and queue position once into buffers
#: (``rlbuf._xla.materialize``) for adds of at least this many steps.
_MATERIALIZE_MIN_STEPS = 64


@dataclasses.dataclass(frozen=True)
class SliceSampler(_SliceBase):
    """Samples ``num_slices`` slices of ``slice_len`` consecutive steps of one trajectory.

    Args:
      num_slices / slice_len: exactly one; the other is ``batch_size // given`` (the buffer's
        ``batch_size`` must be divisible).
      traj_key (alias ``trajectory_key``) / end_key / end_keys: ``traj_key``: a trajectory is
        a run of consecutive steps of a lane with one id. ``end_key``: a trajectory ends at a
        step whose flag is True; ``end_keys``: several flags OR-ed (absent ones skipped), e.g.
        ``[("next", "terminated"), ("next", "truncated")]``. As in TorchRL, ``traj_key`` and an
        end key may be given together (the end flags are used when the ids are not stored),
        and with none given the stored keys decide: ``("collector", "traj_ids")``, then
        ``"episode"``, then ``("next", "done")``; resolved at ``ReplayBuffer.init``. With
        ``ndim >= 2`` each lane (env) holds its own trajectories along time, and a trajectory
        may wrap around the ring's physical end.
      truncated_key: set True at each slice's last step in the returned batch (and
        ``truncated_key[:-1] + ("done",)`` or-ed with it), if the buffer stores them.
      init_key: ``"is_init"`` (default): set True at each slice's first step, OR-ed with the
        stored flags, if the buffer stores it (TorchRL's); ``None``: stored flags untouched.
      strict_length: True: trajectories with fewer than ``slice_len`` stored steps are never
        chosen. False: they give whole-trajectory slices padded at the end (zeros,
        ``info["mask"]`` False on the padding; shapes stay static unlike TorchRL).
      burn_in: ``b >= 0`` steps before each slice, for a recurrent learner to warm its state
        up (R2D2): sequences are ``[num_slices, b + slice_len, ...]``; the ``slice_len``
        learning steps are drawn exactly as with ``burn_in=0`` (the same draw for the same
        key); the ``b`` steps before them are those just before in the same trajectory, and
        where the stored trajectory starts later the missing ones are padding at the front
        (zeros, ``info["mask"]`` False). ``info["learning_mask"]`` (``[num_slices, b +
        slice_len]``) marks the real learning steps. ``batch_size`` still counts learning
        steps: ``num_slices * slice_len == batch_size``.

    Distribution (TorchRL's): each slice independently picks a trajectory uniformly among the
    eligible stored ones (all lanes together), then a start uniformly among its
    ``length - slice_len + 1`` positions. A trajectory partly overwritten by the ring counts
    with its stored part only.

    Output: leaves ``[num_slices, slice_len, ...]``; ``info["index"]`` is ``(*lane_idx, t)``
    of ``[num_slices, slice_len]`` int32 arrays (an array for ``ndim=1``); ``info["mask"]``
    ``[num_slices, slice_len]`` bool (``[num_slices, burn_in + slice_len]`` with burn-in, and
    ``info["learning_mask"]`` the same shape; without burn-in it equals ``info["mask"]``). No
    eligible trajectory (empty or too-short buffer): ``can_sample`` False, ``sample`` returns
    zeros with ``info["mask"]`` all False.

    Cost: ``on_write`` O(lanes × steps added); ``sample`` O(num_slices × slice_len + lanes),
    independent of the capacity, and it never writes the ``[lanes, capacity]`` bookkeeping (so
    discarding the state it returns costs nothing). The per-length queue of long trajectories
    is kept for ``slice_len``: given as ``slice_len=``, from the start; derived from
    ``num_slices``, it is learnt from the first ``sample`` (which, like any sample before the
    next ``add``, takes an O(lanes × capacity) path) and built by the next ``add``, once.
    Memory: three int32 per stored time slot and lane (trajectory record start, queue entry
    start and end), i.e. 12 bytes per transition beside the data.

    Requires the round-robin writer (the bookkeeping assumes each ``add`` fills the next slots
    in time). Random draws map 32 random bits to ``[0, n)`` by multiply-shift (``rlbuf._xla.below``):
    each outcome's probability is within ``2**-32`` of exact.
    """

    def init(self, layout):
        spec = self._spec(layout)
        n_l, cap = layout.n_lanes, layout.capacity
        thr = self.slice_len if self.slice_len is not None else 0
        return SliceState(
            traj=trj.init(layout, spec),
            queue=jnp.zeros((n_l, cap, 2), jnp.int32),
            queued=jnp.zeros((n_l,), jnp.int32),
            qlen=jnp.zeros((n_l,), jnp.int32),
            thr=jnp.full((), thr, jnp.int32),
            want=jnp.full((), thr, jnp.int32),
            qhead=jnp.zeros((n_l,), jnp.int32),
        )

    def on_write(self, ring, sstate, write, data):
        layout = ring.layout
        spec = self._spec(layout)
        if not self.strict_length:  # the queue serves strict sampling only
            ts, _ = trj.update(ring, sstate.traj, spec, write, data)
            return dataclasses.replace(sstate, traj=ts)
        old_total = ring.added - jax.tree_util.tree_leaves(data)[0].shape[layout.ndim - 1]
        ts, w = trj.update(ring, sstate.traj, spec, write, data)
        thr = sstate.thr
        # Each step's offset in its trajectory (and below the queue positions) computed once into
        # buffers for a long add: XLA:CPU would recompute it in each consumer (the queue's index,
        # its values, the marks). Not for a few steps, where the recomputation is cheaper than the
        # loop (slice loop, add 4x8: 0.5 µs less per add on one core). (materialize needs
        # non-negative values: offsets are, stamps may not be.)
        once = _xla.materialize if w.stamp.shape[1] >= _MATERIALIZE_MIN_STEPS else (lambda x: x)
        off = once(w.stamp - w.start)
        w = w._replace(start=w.stamp - off)
        # A trajectory joins the queue when its thr-th step is written; if that step was in
        # the part of an over-long add the ring skipped, at its first kept step.
        first_kept = (jnp.arange(off.shape[1]) == 0)[None, :]
        reached_in_skip = first_kept & (off > thr - 1) & (w.start + thr - 1 - old_total >= 0)
        # (offsets are >= 0: with thr = 0, no queue, `off == thr - 1` never holds)
        mark = (off == thr - 1) | ((thr > 0) & reached_in_skip if write.skip else False)
        cap = layout.capacity
        # Trajectories queued by this add up to each step: the newest queued one as of a step is
        # entry `queued - 1 + marked`.
        marked = once(_xla.count_true(mark))
        # (Re)write the entry of every queued trajectory this add extended, once, at its last step
        # here: its start, and its end as of this add. A trajectory is queued iff it has reached
        # thr steps (off >= thr - 1), and then it is the newest queued one, at slot
        # qhead - 1 + marked (0 <= marked <= kept steps <= capacity).
        last_here = jnp.concatenate([w.new[:, 1:], jnp.ones((off.shape[0], 1), jnp.bool_)], axis=1)
        live = (thr > 0) & (off - (thr - 1) >= 0) & last_here
        # The queue through per-lane windows (rlbuf._xla.lane_windows: on CPU no op touches the
        # whole [L, capacity] queue): the entries written here (slots qhead - 1 .. qhead + T - 1)
        # and the oldest ones, probed below (slots qhead - qlen .. + T - 1).
        width = min(off.shape[1] + write.skip, cap)
        head = _xla.wrap_near(sstate.qhead - 1, cap)
        win = _xla.lane_windows(sstate.queue, [(head, off.shape[1] + 1),
                                               (_xla.wrap_near(sstate.qhead - sstate.qlen, cap), width)])
        win = win.set_after(head, marked, live, jnp.stack([w.start, w.stamp + 1], axis=-1))
        queue = win.put(sstate.queue)
        n_marked = marked[:, -1]
        queued = sstate.queued + n_marked
        qhead = (sstate.qhead + n_marked) % cap
        # Entries of stored trajectories (SliceState.qlen): this add's are (their trajectories
        # have a kept step); of the earlier ones, the oldest whose end (as refreshed by this add)
        # is no longer past the oldest stored stamp are gone, at most T of them (each had a step
        # overwritten). Read from the updated queue (read before the in-place scatter, XLA would
        # copy the whole queue; through the windows, the updated first window is read first):
        # this add's entries reuse the slots of the oldest qlen + n_marked - capacity, which are
        # gone anyway (at most `capacity` are stored).
        q_old = sstate.qlen[:, None]

        def ended(j):
            end = win.take(_xla.wrap_near(sstate.qhead[:, None] + (j - q_old), cap), column=1)
            return (j - (q_old + n_marked[:, None] - cap) < 0) | (end - ring.oldest_stamp <= 0)

        qlen = sstate.qlen + n_marked - trj.count_prefix(ended, sstate.qlen, width)
        s = SliceState(traj=ts, queue=queue, queued=queued, qlen=qlen, thr=thr, want=sstate.want, qhead=qhead)
        # If the last sample asked for another length, rebuild the queue for it from the updated
        # records (once; see rlbuf._xla.run_at_most_once for why not a cond). It comes last, so
        # the records it reads are final and are not copied either.
        want = s.want

        def rebuild(carry):
            traj = carry[-1]
            r = self._rebuild(ring, dataclasses.replace(s, traj=traj, queue=carry[0]), trj.lane_ranges(ring, traj),
                              want)
            return r.queue, r.qlen, r.queued, r.thr, r.qhead, traj

        # The records ride in the carry (returned unchanged), not as a read-only operand: measured
        # ~15 µs less per [4, 1000] add into 100k (strict add 1.81-2.17x -> 1.57-1.75x flashbax,
        # interleaved runs), though the compiled HLO shows no copy of them either way.
        queue, qlen, queued, thr, qhead, traj = _xla.run_at_most_once(
            (want > 0) & (want != s.thr), rebuild, (s.queue, s.qlen, s.queued, s.thr, s.qhead, s.traj), barrier=True
        )
        return dataclasses.replace(s, traj=traj, queue=queue, qlen=qlen, queued=queued, thr=thr, qhead=qhead)

    def _rebuild(self, ring, s: SliceState, ranges, n) -> SliceState:
        """The queue for length ``n`` (traced int32) from scratch, O(L × capacity)."""
        layout = ring.layout
        begin, end, lengths, seq = self._bounds_all(ring, s.traj, ranges)
        long = lengths >= n
        pos = jnp.cumsum(long, axis=1, dtype=jnp.int32) - 1
        idx = jnp.where(long, pos, layout.capacity)
        lanes = jnp.arange(layout.n_lanes, dtype=jnp.int32)[:, None]
        queue = jnp.zeros_like(s.queue).at[lanes, idx].set(
            jnp.stack([begin, end], axis=-1), mode="drop", unique_indices=True
        )
        queued = jnp.sum(long, axis=1, dtype=jnp.int32)
        return SliceState(traj=s.traj, queue=queue, queued=queued, qlen=queued, thr=jnp.asarray(n, jnp.int32),
                          want=s.want, qhead=queued % layout.capacity)

    def _eligible(self, ring, s: SliceState, ranges, n: int):
        """Per lane ``(head, count)``: the queue entries ``head .. head + count - 1`` are exactly
        the stored trajectories with at least ``n`` stored steps (needs ``s.thr == n``).
        ``ranges``: only its ``oldest`` is read."""
        lanes = jnp.arange(ring.n_lanes, dtype=jnp.int32)
        hi = s.queued
        head = hi - s.qlen  # the entries of stored trajectories (SliceState.qlen)
        # Only the oldest stored trajectory can have shrunk below n (overwritten from its start):
        # every later queued one is whole, with at least thr = n steps.
        begin, end = self._entry_bounds(_xla.take_few(s.queue, lanes, s.entry_slot(lanes, head)), ranges)
        shrunk = (head - hi < 0) & (end - begin < n)
        head = head + shrunk
        return head, jnp.where(ring.count > 0, hi - head, 0)

    @staticmethod
    def _entry_bounds(entry, ranges):
        """Stored ``[begin, end)`` stamps of queue entries ``entry`` (``[..., 2]``)."""
        return ranges.oldest + jnp.maximum(entry[..., 0] - ranges.oldest, 0), entry[..., 1]

    def _choose_fast(self, ring, s, ranges, n: int, bits):
        """``(lane, begin, end, total)``: ``num_slices`` trajectories (their lanes and stored
        ``[begin, end)`` stamps) drawn uniformly among the ``total`` eligible ones. Strict: from the
        queue (needs ``s.thr == n``); else from every stored one."""
        layout = ring.layout
        if self.strict_length:
            head, counts = self._eligible(ring, s, ranges, n)
        else:
            head, counts = ranges.first, ranges.n_stored
        cum = jnp.cumsum(counts)
        total = cum[-1]
        u = _xla.below(bits, jnp.maximum(total, 1))
        lane = jnp.searchsorted(cum, u, side="right", method=_xla.searchsorted_method(layout.n_lanes))
        lane = jnp.minimum(lane, layout.n_lanes - 1).astype(jnp.int32)
        within = u - (cum[lane] - counts[lane])
        if self.strict_length:
            # within < counts <= capacity: one conditional subtract instead of a per-slice modulo.
            cap = layout.capacity
            k = _xla.wrap_once(s.entry_slot(jnp.arange(layout.n_lanes), head)[lane] + within, cap)
            begin, end = self._entry_bounds(_xla.take_columns(s.queue, lane, k), ranges)
        else:
            begin, end = trj.bounds(ring, s.traj, ranges, lane, head[lane] + within)
        return lane, begin, end, total

    def _choose_slow(self, ring, s, ranges, n: int, bits):
        """Same draw as :meth:`_choose_fast` without the queue, O(L × capacity)."""
        layout = ring.layout
        lengths, _ = self._lengths_all(ring, s.traj, ranges)
        cum = jnp.cumsum((lengths >= n).reshape(-1), dtype=jnp.int32)
        total = cum[-1]
        u = _xla.below(bits, jnp.maximum(total, 1))
        item = jnp.minimum(jnp.searchsorted(cum, u, side="right"), layout.size - 1).astype(jnp.int32)
        lane = item // layout.capacity
        begin, end = trj.bounds(ring, s.traj, ranges, lane, ranges.first[lane] + item % layout.capacity)
        return lane, begin, end, total

    def sample(self, ring, s, key, batch_size: int):
        n_slices, n = self.shape(batch_size)
        ranges = trj.lane_ranges(ring, s.traj)
        # One threefry call for all the randomness of the batch.
        bits = jax.random.bits(key, (2, n_slices), jnp.uint32)
        if self.strict_length:
            # The O(L × capacity) draw only when the queue is not kept for n (the fast draw's
            # result is then replaced; it reads clipped, meaningless entries, harmlessly).
            # (The loop gets only the records it reads, not the queue: a smaller loop state, 1.5 µs
            # less per sample at 1M.)
            lane, begin, end, total = _xla.run_at_most_once(
                s.thr != n,
                lambda _, traj, ranges_, bits_: self._choose_slow(ring, dataclasses.replace(s, traj=traj), ranges_, n,
                                                                  bits_),
                self._choose_fast(ring, s, ranges, n, bits[0]),
                (s.traj, ranges, bits[0]),
            )
            # Ask the next add to keep the queue for this length (a scalar: no array is copied).
            s = dataclasses.replace(s, want=jnp.full((), n, jnp.int32))
        else:
            lane, begin, end, total = self._choose_fast(ring, s, ranges, n, bits[0])
        ok = jnp.broadcast_to(total > 0, (n_slices,))
        index, info = self._slices(ring, ranges, bits[1], lane, begin, end, ok, n)
        return s, index, info

    def can_sample(self, ring, s, batch_size: int):
        _, n = self.shape(batch_size)
        if not self.strict_length:
            return ring.count > 0
        ranges = trj.lane_ranges(ring, s.traj)

        def slow(_, traj, ranges_):
            lengths, _ = self._lengths_all(ring, traj, ranges_)
            return jnp.any(lengths >= n)

        fast = jnp.sum(self._eligible(ring, s, ranges, n)[1]) > 0
        return _xla.run_at_most_once(s.thr != n, slow, fast, (s.traj, ranges))


from rlbuf.samplers.slice_without_replacement import (  # noqa: E402,F401  (the public import path)
    SliceSamplerWithoutReplacement,
    SliceWithoutReplacementState,
)
