"""Trajectory-aware slice samplers: ``SliceSampler`` and ``SliceSamplerWithoutReplacement``.

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
from typing import Any, Optional

import jax
import jax.numpy as jnp

from rlbuf import _fields, _ring, _tree, _xla
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers.base import Sampler, zero_masked
from rlbuf.writers.base import TIME_ORDER


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SliceState:
    """State of :class:`SliceSampler` (inside ``BufferState.sampler``).

    - ``traj``: the boundary bookkeeping (``_trajectories.TrajectoryState``).
    - ``queue``: ``[L, capacity, 2]`` int32, per lane a ring of entries of the trajectories that
      reached ``thr`` steps, in time order (entry ``k`` at ``k % capacity``): ``(start, end)``, the
      stamp of the trajectory's first step (possibly no longer stored; the stored part begins at
      ``max(start, oldest)``) and one past its newest step (the ongoing trajectory's end is
      refreshed by every ``add``). Why not the trajectory number: a sample then reads one queue
      entry and the data, instead of queue -> trajectory record -> data (each a cache miss at
      large capacities).
    - ``queued``: ``[L]`` int32, entries ever appended per lane.
    - ``qrank``: ``[L, capacity]`` int32, beside the trajectory records of ``traj.start``:
      ``qrank[l, s % capacity]`` is the number of queue entries of lane ``l`` before
      trajectory ``s`` (final once ``s`` begins, since every earlier trajectory has ended), so
      the first queue entry still stored is ``qrank[l, first[l] % capacity]``, O(1).
    - ``thr``: ``[]`` int32, the length the queue is kept for (0: none yet).
    - ``want``: ``[]`` int32, the ``slice_len`` of the last ``sample``; the next ``add``
      rebuilds the queue for it (once, O(L × capacity)) if it differs from ``thr``.
    """

    traj: trj.TrajectoryState
    queue: jax.Array
    queued: jax.Array
    qrank: jax.Array
    thr: jax.Array
    want: jax.Array


def _span_pair(span):
    """TorchRL's ``span``: a bool or int for both sides, or a ``(left, right)`` pair."""
    pair = tuple(span) if isinstance(span, (tuple, list)) else (span, span)
    if len(pair) != 2 or not all(isinstance(x, bool) or isinstance(x, int) and x >= 0 for x in pair):
        raise ValueError(f"span must be a bool, a non-negative int or a (left, right) pair of them, got {span!r}")
    return tuple(x if isinstance(x, bool) else int(x) for x in pair)


def check_slice_config(sampler) -> None:
    """Validate the slice fields of ``sampler`` (``num_slices``, ``slice_len``, ``end_key`` /
    ``end_keys``; which boundary key is used is resolved against the stored keys by
    ``rlbuf.samplers._trajectories.key_spec``; the keys are normalised to tuples and the alias
    ``trajectory_key`` folded into ``traj_key`` at construction, see ``rlbuf._fields``)."""
    self = sampler
    name = type(self).__name__
    if (self.num_slices is None) == (self.slice_len is None):
        raise ValueError(
            f"{name}: give exactly one of num_slices or slice_len "
            f"(got num_slices={self.num_slices!r}, slice_len={self.slice_len!r})"
        )
    for field in ("num_slices", "slice_len"):
        v = getattr(self, field)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{name}: {field} must be a positive int, got {v!r}")
    b = self.burn_in
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        raise ValueError(f"{name}: burn_in must be a non-negative int, got {b!r}")
    if self.end_key is not None and self.end_keys is not None:
        raise ValueError(
            f"{name}: end_key and end_keys are exclusive (one boundary flag, or several OR-ed), "
            f"got end_key={self.end_key!r}, end_keys={self.end_keys!r}"
        )
    if self.end_keys is not None and not self.end_keys:
        raise ValueError(f"{name}: end_keys must name at least one key")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SliceBase(Sampler):
    """The fields, checks and shared pieces of every slice sampler (keyword-only fields)."""

    num_slices: Optional[int] = None
    slice_len: Optional[int] = None
    traj_key: Any = _fields.key()
    end_key: Any = _fields.key()
    end_keys: Any = _fields.keys()
    truncated_key: Any = _fields.key(("next", "truncated"))
    init_key: Any = _fields.key("is_init")
    span: Any = _fields.Converted((False, False), _span_pair)
    strict_length: bool = True
    burn_in: int = 0
    trajectory_key: Any = _fields.key(alias_of="traj_key")

    # Padding (strict_length=False, empty buffer) is zeroed by ``postprocess``.
    pads = True
    # The boundary bookkeeping assumes each add fills the next slots in time.
    requires = frozenset({TIME_ORDER})

    def __post_init__(self):
        check_slice_config(self)

    def split(self, n_groups: int, *, ndim: int, batch_size: int):
        """Each group draws ``num_slices / n_groups`` slices of the same length from its lanes."""
        name = type(self).__name__
        if ndim == 1:
            raise ValueError(
                f"{name} needs lanes (LazyTensorStorage ndim >= 2): with ndim=1 the groups split the "
                "time axis of every batch and trajectories would be cut"
            )
        n_slices, _ = self.shape(batch_size)
        if n_slices % n_groups:
            raise ValueError(f"{name}: num_slices={n_slices} is not divisible by the {n_groups} groups")
        return self if self.num_slices is None else dataclasses.replace(self, num_slices=n_slices // n_groups)

    # --- static configuration -------------------------------------------------------------

    def shape(self, batch_size: int) -> tuple[int, int]:
        """``(num_slices, slice_len)`` for a buffer ``batch_size`` (raises if not divisible)."""
        name = type(self).__name__
        given, what = (self.num_slices, "num_slices") if self.num_slices is not None else (self.slice_len, "slice_len")
        if batch_size % given:
            raise ValueError(f"{name}: batch_size={batch_size} is not divisible by {what}={given}")
        other = batch_size // given
        return (given, other) if self.num_slices is not None else (other, given)

    def _spec(self, layout) -> trj.KeySpec:
        return trj.key_spec(layout, self.traj_key, self.end_key, owner=type(self).__name__, end_keys=self.end_keys)

    def check(self, layout, batch_size: int) -> None:
        n_slices, n = self.shape(batch_size)
        for side, x in zip(("left", "right"), self.span):
            if not isinstance(x, bool) and x >= n:
                raise ValueError(
                    f"{type(self).__name__}: span {side}={x} must be smaller than slice_len={n} (TorchRL's rule)"
                )
        if n > layout.capacity:
            raise ValueError(
                f"{type(self).__name__}: slice_len={n} is larger than the {layout.capacity} time steps "
                f"each lane of the storage holds"
            )
        self._spec(layout)

    # --- shared pieces ----------------------------------------------------------------------

    def _start_range(self, length, n: int):
        """First and last start offsets (``[S]``) a slice of ``n`` steps may take in a trajectory of
        ``length`` stored steps. Without ``span``: ``[0, length - n]`` (a shorter trajectory,
        with ``strict_length=False``, only ``0``). ``span=(left, right)`` (TorchRL's): ``left``
        True lets a slice start up to ``n - 1`` steps before the trajectory (an int ``k``: up to
        ``k``); ``right`` True lets it start up to the last step (an int ``k``: run ``k`` steps
        past the end). A slice then holds at least one step (``n - k`` with an int)."""
        left, right = self.span
        lo = -(n - 1 if left is True else int(left))
        hi = length - 1 if right is True else length - n + int(right)
        return lo, jnp.maximum(hi, lo)

    def _slices(self, ring, ranges, bits, lane, begin, end, ok, n: int):
        """Index/mask of one slice per trajectory of lane ``lane`` with stored stamps ``[begin,
        end)`` (``[S]`` each; ``ok`` False gives an all-padding slice): a start uniform over
        :meth:`_start_range` (from the uint32 ``bits``), whole (padded) trajectory if shorter
        than ``n``. The real steps of a slice come first, padding (``mask`` False) after them,
        also for a slice that starts before its trajectory (``span``)."""
        length = jnp.where(ok, end - begin, 0)
        lo, hi = self._start_range(length, n)
        off = lo + _xla.below(bits, hi - lo + 1)
        first = jnp.maximum(off, 0)
        real = jnp.minimum(off + n, length) - first
        return self._sequence(ring, lane, begin + first - ranges.oldest, first, ok, real, n)

    def _sequence(self, ring, lane, rank0, before, ok, real, n: int):
        """``(index, info)`` of the ``[S, burn_in + n]`` sequences whose learning steps start at
        age rank ``rank0`` (``[S]``), the first ``real`` (``[S]``) of their ``n`` real (the rest
        padding), ``before`` (``[S]``) stored steps of the same trajectory preceding them. The
        burn-in steps are the ``min(before, burn_in)`` steps just before the learning start; the
        missing ones are padding at the front (the trajectory starts later, or was overwritten).
        ``info``: ``"mask"`` (real steps) and ``"learning_mask"`` (the real learning steps),
        ``[S, b + n]``. Burn-in steps are real stored steps of the trajectory, so a sequence
        never crosses a trajectory, the write head or an unwritten slot when its learning part
        does not. Masks come from one iota (no concatenation: fewer XLA ops per sample)."""
        b = self.burn_in
        k = jnp.arange(b + n, dtype=jnp.int32)[None, :]
        learn = (k >= b) & (k < b + real[:, None])
        if b == 0:
            mask = learn
        else:
            pad = b - jnp.minimum(jnp.where(ok, before, 0), b)
            mask = learn | ((k >= pad[:, None]) & (k < b) & ok[:, None])
        return self._slice_index(ring, lane, rank0, ok, mask, shift=b), {"mask": mask, "learning_mask": learn}

    @staticmethod
    def _slice_index(ring, lane, rank0, ok, mask, shift: int = 0):
        """The one slice-index builder: ``(*lane_idx, t)``, ``[S, n]`` int32 each, of slices of
        flat lanes ``lane`` whose step ``k`` is at age rank ``rank0 + k - shift`` (``rank0``:
        ``[S]``; ``shift``: the burn-in length). Padding (``mask`` False) points at rank
        ``rank0`` (the first learning step) and an all-padding slice (``ok`` False) at slot 0:
        always a real storage location, zeroed by ``postprocess``. Slices never cross the write
        head, so ``0 <= rank0 + k - shift < count <= capacity`` (:func:`rlbuf._ring.physical_near`)."""
        steps = jnp.arange(mask.shape[1], dtype=jnp.int32) - shift
        rank = jnp.where(ok, rank0, 0)[:, None] + jnp.where(mask, steps[None, :], 0)
        t = _ring.physical_near(rank, ring.cursor, ring.count, ring.capacity).astype(jnp.int32)
        t = jnp.where(ok[:, None], t, 0)
        lane_idx = _ring.lane_index(lane, ring.lanes) if ring.lanes else ()
        return (*(jnp.broadcast_to(li[:, None], t.shape).astype(jnp.int32) for li in lane_idx), t)

    def postprocess(self, ring, batch, info):
        """Zero padding; set ``truncated_key`` (and its sibling ``"done"``, if stored) True at each
        slice's last real step, and ``init_key`` (``"is_init"``, OR-ed with the stored flags) True
        at each slice's first real step, like TorchRL (only keys the buffer stores): a recurrent
        module then restarts from the stored state at every slice start (with ``burn_in``, at
        the first burn-in step). ``init_key=None`` / ``truncated_key=None`` leave those keys as
        stored."""
        mask = info["mask"]
        batch = zero_masked(batch, mask)
        stored = set(ring.layout.keys())
        flags = []
        if self.truncated_key is not None:
            nxt = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
            last = mask & ~nxt
            flags += [(self.truncated_key, last, "set"), (self.truncated_key[:-1] + ("done",), last, "or")]
        if self.init_key is not None:
            prev = jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
            flags.append((self.init_key, mask & ~prev, "or"))
        for k, mark, op in flags:
            if k not in stored:
                continue
            x = _tree.get(batch, k)
            flag = mark.reshape(mark.shape + (1,) * (x.ndim - 2))
            flag = jnp.broadcast_to(flag, x.shape)
            if op == "or":
                flag = flag | (x != 0)
            batch = _tree.set_in(batch, k, flag.astype(x.dtype))
        return batch

    def _bounds_all(self, ring, ts, ranges):
        """``[L, capacity]`` each: stored ``[begin, end)`` stamps of the lane's ``j``-th stored
        trajectory, its stored length (0 past the last) and its number; O(L × capacity)."""
        j = jnp.arange(ring.capacity, dtype=jnp.int32)[None, :]
        seq = ranges.first[:, None] + j
        lane = jnp.broadcast_to(jnp.arange(ring.n_lanes, dtype=jnp.int32)[:, None], seq.shape)
        begin, end = trj.bounds(ring, ts, ranges, lane, seq)
        return begin, end, jnp.where(j < ranges.n_stored[:, None], end - begin, 0), seq

    def _lengths_all(self, ring, ts, ranges):
        """``[L, capacity]`` stored length of the lane's ``j``-th stored trajectory (0 past the
        last) and the trajectory numbers; O(L × capacity)."""
        return self._bounds_all(ring, ts, ranges)[2:]


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
    Memory: five int32 per stored time slot and lane (trajectory number, record start, queue
    entry start and end, queue rank), i.e. 20 bytes per transition beside the data.

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
            qrank=jnp.zeros((n_l, cap), jnp.int32),
            thr=jnp.full((), thr, jnp.int32),
            want=jnp.full((), thr, jnp.int32),
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
        off = w.stamp - w.start
        # A trajectory joins the queue when its thr-th step is written; if that step was in
        # the part of an over-long add the ring skipped, at its first kept step.
        first_kept = (jnp.arange(off.shape[1]) == 0)[None, :]
        reached_in_skip = first_kept & (off > thr - 1) & (w.start + thr - 1 - old_total >= 0)
        mark = (thr > 0) & ((off == thr - 1) | (reached_in_skip if write.skip else False))
        cap = layout.capacity
        # Entry of the newest queued trajectory as of each step.
        pos = sstate.queued[:, None] + jnp.cumsum(mark, axis=1, dtype=jnp.int32) - 1
        # (Re)write the entry of every queued trajectory this add extended, once, at its last step
        # here: its start, and its end as of this add. A trajectory is queued iff it has reached
        # thr steps (off >= thr - 1), and then it is the newest queued one, entry `pos`.
        last_here = jnp.concatenate(
            [w.seq[:, 1:] != w.seq[:, :-1], jnp.ones((off.shape[0], 1), jnp.bool_)], axis=1
        )
        live = (thr > 0) & (off - (thr - 1) >= 0) & last_here
        idx = jnp.where(live, pos % cap, cap)
        lanes = jnp.arange(layout.n_lanes, dtype=jnp.int32)[:, None]
        entry = jnp.stack([w.start, w.stamp + 1], axis=-1)
        queue = sstate.queue.at[lanes, idx].set(entry, mode="drop", unique_indices=True)
        queued = sstate.queued + jnp.sum(mark, axis=1, dtype=jnp.int32)
        # Queue rank of every trajectory with a record written by this add (the same slots as
        # trj.update's records): for one begun in this add, the entries appended before its
        # first step; one begun earlier keeps its rank.
        rec = jnp.where((w.start == w.stamp) | first_kept, w.seq % cap, cap)
        begun_here = w.start - old_total >= 0
        excl = sstate.queued[:, None] + jnp.cumsum(mark, axis=1, dtype=jnp.int32) - mark
        rank = jnp.where(begun_here, excl, sstate.qrank[lanes, w.seq % cap])
        qrank = sstate.qrank.at[lanes, rec].set(rank, mode="drop", unique_indices=True)
        s = SliceState(ts, queue, queued, qrank, thr, sstate.want)
        # If the last sample asked for another length, rebuild the queue for it from the updated
        # records (once; see rlbuf._xla.run_at_most_once for why not a cond). It comes last, so
        # the records it reads are final and are not copied either.
        ranges = trj.lane_ranges(ring, ts)
        want = s.want

        def rebuild(carry, traj, ranges_):
            r = self._rebuild(ring, dataclasses.replace(s, traj=traj, queue=carry[0], qrank=carry[1]), ranges_, want)
            return r.queue, r.qrank, r.queued, r.thr

        queue, qrank, queued, thr = _xla.run_at_most_once(
            (want > 0) & (want != s.thr), rebuild, (s.queue, s.qrank, s.queued, s.thr), (s.traj, ranges)
        )
        return dataclasses.replace(s, queue=queue, qrank=qrank, queued=queued, thr=thr)

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
        stored = jnp.arange(layout.capacity)[None, :] < ranges.n_stored[:, None]
        qrank = s.qrank.at[lanes, jnp.where(stored, seq % layout.capacity, layout.capacity)].set(
            pos + 1 - long, mode="drop", unique_indices=True
        )
        queued = jnp.sum(long, axis=1, dtype=jnp.int32)
        return SliceState(s.traj, queue, queued, qrank, jnp.asarray(n, jnp.int32), s.want)

    def _eligible(self, ring, s: SliceState, ranges, n: int):
        """Per lane ``(head, count)``: the queue entries ``head .. head + count - 1`` are exactly
        the stored trajectories with at least ``n`` stored steps (needs ``s.thr == n``)."""
        cap = ring.capacity
        lanes = jnp.arange(ring.n_lanes, dtype=jnp.int32)
        hi = s.queued
        head = s.qrank[lanes, ranges.first % cap]
        # Only the oldest stored trajectory can have shrunk below n (overwritten from its start):
        # every later queued one is whole, with at least thr = n steps.
        begin, end = self._entry_bounds(s.queue[lanes, head % cap], ranges)
        shrunk = (head < hi) & (end - begin < n)
        head = head + shrunk
        return head, jnp.where(ranges.n_stored > 0, hi - head, 0)

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
            k = _xla.wrap_once((head % cap)[lane] + within, cap)
            begin, end = self._entry_bounds(s.queue[lane, k], ranges)
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
            lane, begin, end, total = _xla.run_at_most_once(
                s.thr != n,
                lambda _, s_, ranges_, bits_: self._choose_slow(ring, s_, ranges_, n, bits_),
                self._choose_fast(ring, s, ranges, n, bits[0]),
                (s, ranges, bits[0]),
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
