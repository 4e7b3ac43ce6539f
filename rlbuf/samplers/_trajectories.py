"""Trajectory-boundary bookkeeping kept up to date at ``add`` time (reusable by every slice sampler).

Why: TorchRL re-derives trajectory boundaries from the whole storage on every ``sample``
(O(capacity)). Here each ``add`` updates a small per-slot record, so that at sample time
"which trajectory holds slot ``t``, how many of its steps are stored before and after ``t``"
costs O(1) per query, independent of the capacity.

Model (per lane; lanes are the ``ndim - 1`` leading batch dims, flattened row-major to
``L = prod(lanes)`` internally, ``L = 1`` for ``ndim=1``):

- Every step ever added to a lane gets a *stamp*: its step number in that lane counted over
  all adds (the ring's ``added`` is the stamp of the next step). The ring stores the steps
  with stamps ``[added - count, added)``; ``Ring.stamp(t)`` / ``Ring.slot(stamp)`` convert
  between physical slots and stamps (``rlbuf._ring.Ring``).
- A *trajectory* is a maximal run of consecutive steps of one lane with the same
  ``traj_key`` value (``traj_key`` mode), or the steps up to and including one whose
  ``end_key`` is True (``end_key`` mode). A trajectory partly overwritten by the ring is
  reduced to its stored part; the write head is always a boundary (the newest and oldest
  stored steps are never in one stored run, because stamps are contiguous only within
  ``[added - count, added)``).
- Trajectories of a lane are numbered ``0, 1, 2, ...`` in time order (``seq``; int32,
  monotone). ``TrajectoryState.start[l, record_slot(s)]`` is the stamp of the first step of
  trajectory ``s`` (a ring of records: at most ``capacity`` trajectories of a lane can be
  stored at once, so the record of every stored trajectory is intact). Optionally
  (``init(..., per_slot=True)``, for samplers that query arbitrary slots)
  ``TrajectoryState.seq[l, t]`` is the number of the trajectory holding slot ``t``.
  ``record_slot(s) = (rec_head[l] + (s - n_traj[l])) mod capacity``: a per-lane slot kept
  reduced modulo the capacity plus a difference of int32 numbers, so it stays right after the
  numbers wrap at 2**31 whatever the capacity (``s % capacity`` would not: 2**32 is not a
  multiple of a capacity that is not a power of two).
- The stored trajectories of lane ``l`` are exactly ``first[l] .. last[l]`` (consecutive
  numbers; :func:`lane_ranges`), the stored part of trajectory ``s`` spans the stamps
  ``[begin, end)`` given by :func:`bounds`. ``first = n_traj - n_stored``: each ``add`` of
  ``T`` steps counts how many of the oldest stored trajectories it overwrote entirely (at most
  ``T``; a trajectory is gone iff its end, the next one's start, is no longer past the oldest
  stored stamp), O(L × T). Why not the per-slot numbers ``seq`` (``first`` = the number of the
  oldest slot, O(1)): they are one more ``[L, capacity]`` scatter per add, as costly as a data
  leaf's.

Public helpers (all pure, jittable, O(1) per queried item unless stated; ``ring`` is the
buffer's ``rlbuf._ring.Ring`` view):

- :func:`key_spec` — validate ``traj_key``/``end_key`` against a ``Layout`` (clear errors).
- :func:`init` / :func:`update` — create the state / fold one ``add`` into it (call from
  ``Sampler.init`` / ``Sampler.on_write``; ``update`` is O(L × T) for a ``T``-step add).
- :func:`count_prefix` — how many of the oldest entries of a per-lane ring of monotone
  stamps are gone (the records here, ``SliceSampler``'s queue), by a 32-probe search.
- :func:`search_first` — a binary search (``slot_position`` without ``seq``).
- :func:`record_slot` — where the record of trajectory ``(lane, seq)`` lives.
- :func:`lane_ranges` — ``first``, ``last``, ``n_stored`` per lane and the oldest stamp (O(L)).
- :func:`bounds` — stored ``[begin, end)`` stamps of trajectories ``(lane, seq)``.
- :func:`slot_position` — for slots ``(*lane_idx, t)`` (O(log capacity) each without ``seq``):
  trajectory number, steps of its stored trajectory before the slot, steps from the slot to
  its end (slot included).
  "``t`` starts a valid slice of ``n`` steps" is ``written & (after >= n)``.
- :func:`valid_start_mask` — that predicate for every slot, ``[*lanes, capacity]`` bool
  (O(L × capacity); for samplers that keep a per-slot weight tree).

Stamps and trajectory numbers are int32: they wrap after 2**31 steps (or trajectories) per
lane, like ``BufferState.added`` (every comparison of stamps is a difference, so a wrap in
the middle of a stored trajectory is harmless).

The ring must be written round-robin (``RoundRobinWriter``): the bookkeeping relies on the
written slots of an ``add`` being the next ones in time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _ring, _tree, _xla


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrajectoryState:
    """Boundary bookkeeping of a buffer (lives inside a sampler's state).

    - ``seq``: ``[L, capacity]`` int32, trajectory number of each physical slot (lane-major,
      lanes flattened row-major; meaningless for unwritten slots), or ``None`` when not kept
      (``init(..., per_slot=False)``).
    - ``start``: ``[L, capacity]`` int32, ring of trajectory records:
      ``start[l, record_slot(l, s)]`` is the stamp of the first step of trajectory ``s`` of lane
      ``l`` (possibly older than the oldest stored step: use :func:`bounds`).
    - ``n_traj``: ``[L]`` int32, trajectories ever begun per lane (the newest is
      ``n_traj - 1``; wraps after 2**31).
    - ``rec_head``: ``[L]`` int32 in ``[0, capacity)``, the record slot of trajectory ``n_traj``
      (the next one to begin); see :func:`record_slot`.
    - ``last``: ``[L, F]`` boundary-key values of each lane's newest step (``F`` = the key's
      trailing elements, at least 1), to tell whether the next ``add`` continues it.
    - ``n_stored``: ``[L]`` int32 in ``[0, capacity]``, trajectories with a stored step (the
      newest ``n_stored``; counted by every ``update``).

    The stamp of the next step is the ring's ``added`` (not copied here).
    """

    seq: Optional[jax.Array]
    start: jax.Array
    n_traj: jax.Array
    last: jax.Array
    rec_head: jax.Array
    n_stored: jax.Array


def record_slot(ts: TrajectoryState, lane, seq, capacity: int):
    """Slot in ``[0, capacity)`` of the record of trajectory ``seq`` of flat lane ``lane`` (any
    matching shapes). Consecutive numbers get consecutive slots modulo ``capacity``; exact across the int32 wrap
    of the numbers (only their difference to ``n_traj`` is used)."""
    return (ts.rec_head[lane] + (seq - ts.n_traj[lane])) % capacity


class KeySpec(NamedTuple):
    """The validated boundary key: ``key`` (tuple), ``is_end`` (end-flag mode), its trailing
    shape and dtype in storage; ``keys``: with several end flags (``end_keys``), all those
    stored, OR-ed into one bool flag per step (``shape`` ``()``, ``dtype`` bool)."""

    key: tuple
    is_end: bool
    shape: tuple
    dtype: np.dtype
    keys: tuple = ()


#: TorchRL's auto-detection order when neither ``traj_key`` nor ``end_key`` is given.
AUTO_TRAJ_KEYS = (("collector", "traj_ids"), ("episode",))
AUTO_END_KEY = ("next", "done")


class Written(NamedTuple):
    """Per written (kept) step of one ``add``, all ``[L, n]`` (``n = len(write.positions)``):
    ``seq`` trajectory number, ``start`` stamp of the trajectory's true first step,
    ``stamp`` the step's stamp (``offset = stamp - start`` is its step number within the
    trajectory, counting steps that are no longer stored or were skipped), ``slot`` the record
    slot of the trajectory (:func:`record_slot`), all int32; ``record`` (bool) True where this
    add wrote the trajectory's record (its first kept step); ``new`` (bool) True where the step
    begins a trajectory."""

    seq: jax.Array
    start: jax.Array
    stamp: jax.Array
    slot: jax.Array
    record: jax.Array
    new: jax.Array


def key_spec(layout, traj_key=None, end_key=None, owner: str = "SliceSampler", end_keys=None) -> KeySpec:
    """Resolve the boundary key against the stored keys, as TorchRL does; return its :class:`KeySpec`.

    - ``traj_key`` stored: trajectory ids. Given but not stored, with ``end_key``/``end_keys``
      also given: those are the fallback (TorchRL reads the end flags when the ids are absent).
    - ``end_key``: one end flag; ``end_keys``: several, OR-ed (absent ones skipped, at least one
      stored).
    - Neither: ``("collector", "traj_ids")`` if stored, then ``"episode"``, then the end flag
      ``("next", "done")``.

    Raises ``ValueError`` naming the key(s) tried (and listing the stored keys) if none is stored.
    """
    stored = set(layout.keys())
    listing = ", ".join(_tree.key_str(k) for k in layout.keys())

    def missing(what):
        return ValueError(f"{owner}: {what} in the buffer (stored keys: {listing})")

    def ids(key):
        shape, dtype = layout.spec(key)
        return KeySpec(key, False, tuple(shape), np.dtype(dtype))

    has_end = end_key is not None or end_keys is not None
    if traj_key is not None:
        key = _tree.as_tuple(traj_key)
        if key in stored:
            return ids(key)
        if not has_end:
            raise missing(f"traj_key {_tree.key_str(key)} is not stored")
    elif not has_end:
        for key in AUTO_TRAJ_KEYS:
            if key in stored:
                return ids(key)
        end_key = AUTO_END_KEY
        if end_key not in stored:
            tried = ", ".join(_tree.key_str(k) for k in (*AUTO_TRAJ_KEYS, AUTO_END_KEY))
            raise missing(f"no traj_key / end_key given and none of {tried} (TorchRL's defaults) is stored")
    if end_keys is not None:
        keys = tuple(_tree.as_tuple(k) for k in end_keys)
        present = tuple(k for k in keys if k in stored)
        if not present:
            raise missing(f"none of the end_keys {', '.join(_tree.key_str(k) for k in keys)} is stored")
        return KeySpec(present[0], True, (), np.dtype(bool), present)
    key = _tree.as_tuple(end_key)
    if key not in stored:
        raise missing(f"end_key {_tree.key_str(key)} is not stored")
    shape, dtype = layout.spec(key)
    return KeySpec(key, True, tuple(shape), np.dtype(dtype))


def init(layout, spec: KeySpec, per_slot: bool = False) -> TrajectoryState:
    """Empty bookkeeping for ``layout`` (distinct arrays, so the state can be donated).
    ``per_slot``: keep ``seq`` (needed by :func:`slot_position` / :func:`valid_start_mask`)."""
    n, cap = layout.n_lanes, layout.capacity
    feat = max(int(np.prod(spec.shape, dtype=np.int64)), 1)
    return TrajectoryState(
        seq=jnp.zeros((n, cap), jnp.int32) if per_slot else None,
        start=jnp.zeros((n, cap), jnp.int32),
        n_traj=jnp.zeros((n,), jnp.int32),
        last=jnp.zeros((n, feat), spec.dtype),
        rec_head=jnp.zeros((n,), jnp.int32),
        n_stored=jnp.zeros((n,), jnp.int32),
    )


#: ``update`` computes the trajectory counts once into buffers (``rlbuf._xla.materialize``) for
#: adds of at least this many steps.
MATERIALIZE_MIN_STEPS = 64


def update(ring, ts: TrajectoryState, spec: KeySpec, write, data) -> tuple[TrajectoryState, Written]:
    """Fold one ``add`` into the bookkeeping (call from ``Sampler.on_write``).

    ``ring``: the ring after the add; ``write``: the ``rlbuf.writers.WriteInfo`` of the add;
    ``data``: the whole batch
    ``[*lanes, T, ...]`` (including the ``write.skip`` leading steps the ring dropped, which
    still matter for where the kept steps' trajectories began). Returns the new state and
    :class:`Written` for the kept steps. O(L × T).
    """
    layout = ring.layout
    n_l, cap = layout.n_lanes, layout.capacity
    if spec.keys:  # several end flags: one bool flag per step, True if any is set
        flags = [_tree.get(data, k) for k in spec.keys]
        t_len = flags[0].shape[layout.ndim - 1]
        x = functools.reduce(jnp.logical_or, [f.reshape(n_l, t_len, -1).any(-1) for f in flags])
    else:
        x = _tree.get(data, spec.key)
        t_len = x.shape[layout.ndim - 1]
    total = ring.added - t_len  # stamp of the add's first step
    x = x.reshape(n_l, t_len, -1)
    if x.shape[-1] == 0:  # a key with a zero-size trailing shape carries no boundary information
        x = jnp.zeros((n_l, t_len, 1), x.dtype)
    prev = jnp.concatenate([ts.last[:, None, :].astype(x.dtype), x[:, :-1]], axis=1)
    if spec.is_end:
        new = jnp.any(prev != 0, axis=-1)
    else:
        new = jnp.any(x != prev, axis=-1)
    steps = jnp.arange(t_len, dtype=jnp.int32)
    # The first step ever stored in an empty ring always begins a trajectory.
    new = new | ((steps == 0)[None, :] & ((write.count == 0) | (ts.n_traj == 0))[:, None])
    cum = _xla.count_true(new)  # trajectories begun in this add up to each step
    # The last step begun in this add up to each step (-1: none): its trajectory's start
    # (rlbuf._xla.last_true: elementwise on CPU, from the same packed words as the count).
    begun = _xla.last_true(new)
    if t_len >= MATERIALIZE_MIN_STEPS:
        # Computed once into buffers: XLA:CPU would recompute the packed-word count and the
        # boundary test in each consumer (record slots and values, offsets, the slice queue's
        # marks): slice add [4, 1000], strict, one core, 112 -> 95 µs. Not for a few steps, where
        # the recomputation is cheaper than the loop.
        cum, new, begun = _xla.materialize((cum, new, begun))
    lanes = jnp.arange(n_l, dtype=jnp.int32)
    # The records this add reads and writes, through per-lane windows (rlbuf._xla.lane_windows:
    # on CPU no op touches the whole [L, capacity] ring): the ongoing trajectory's record and the
    # new ones (slots rec_head - 1 .. rec_head + T - 1), and the oldest stored ones, whose ends
    # count_prefix probes below (slots rec_head + 1 - n_stored .. + T - 1).
    head = _xla.wrap_near(ts.rec_head - 1, cap)
    windows = [(head, t_len + 1)]
    if ts.seq is None and not write.skip:
        windows.append((_xla.wrap_near(ts.rec_head + 1 - ts.n_stored, cap), t_len))
    win = _xla.lane_windows(ts.start, windows)
    # (with n_traj == 0 step 0 is new, so the garbage record read here is never used)
    ongoing = win.take(head[:, None])[:, 0]

    skip = write.skip
    cum_k, new_k = cum[:, skip:], new[:, skip:]
    stamp_k = total + steps[skip:]
    seq_k = ts.n_traj[:, None] - 1 + cum_k
    # Record slot of each kept step's trajectory (record_slot, with seq - n_traj = cum - 1).
    slot_k = ts.rec_head[:, None] + cum_k - 1
    slot_k = _xla.wrap_near(slot_k, cap) if t_len <= cap else slot_k % cap
    # One record per trajectory with a kept step, written at its first kept step (at most
    # `capacity` consecutive numbers, hence distinct slots): a new step's stamp, or at the first
    # kept step the start of the trajectory it continues (begun in the skipped part, or the
    # ongoing one). Only boundaries are written; the rest of the indices are dropped.
    start0 = ongoing
    if skip:
        last_new = jnp.max(jnp.where(new[:, :skip], steps[:skip], -1), axis=1)
        start0 = jnp.where(last_new >= 0, total + last_new, ongoing)
    first_kept = (steps[: t_len - skip] == 0)[None, :]
    record = new_k | first_kept
    values = jnp.where(new_k, stamp_k, start0[:, None])
    if t_len <= cap:  # slot_k = (head + cum_k) mod cap, 0 <= cum_k <= t_len
        win = win.set_after(head, cum_k, record, values)
    else:
        win = win.set(jnp.where(record, slot_k, cap), values)
    start_rec = win.put(ts.start)
    pos = write.positions
    if ts.seq is None:
        seq_slots = None
    elif pos.shape[0] == 1:  # (a one-step add: XLA makes this a dynamic-update-slice, cheaper still)
        seq_slots = ts.seq.at[:, pos].set(seq_k, mode="drop", unique_indices=True)
    else:
        seq_slots = set_rows(ts.seq, jnp.broadcast_to(pos, seq_k.shape), seq_k)
    n_new = cum[:, -1]
    n_traj = ts.n_traj + n_new
    rec_head = (ts.rec_head + n_new) % cap
    if skip:  # the ring holds only this add's kept steps: the trajectories with one are stored
        n_stored = n_new - cum[:, skip] + 1
    elif seq_slots is not None:  # the oldest slot's number: O(1)
        n_stored = n_traj - seq_slots[lanes, ring.oldest_slot]
    else:
        # Those begun here are stored (T <= capacity); of those stored before, the oldest ones
        # whose end (the next one's start; the newest one's, if it goes on, is not written yet)
        # is no longer past the oldest stored stamp are gone: at most T of them, since each had a
        # step overwritten. Their ends were past the oldest stamp one add ago, so the
        # differences stay below capacity + T. The ends are read from the updated records (read
        # before the in-place scatter, XLA would copy the whole array; through the windows, the
        # updated first window is read first): this add's records reuse the slots of the oldest
        # n_old + n_new - capacity, which are gone anyway (at most `capacity` trajectories are stored).
        n_old, n_add = ts.n_stored[:, None], n_new[:, None]

        def ended(j):
            nxt = win.take(_xla.wrap_near(ts.rec_head[:, None] + (j + 1 - n_old), cap))
            reused = j - (n_old + n_add - cap) < 0
            return reused | ((j + 1 - n_old - n_add < 0) & (nxt - ring.oldest_stamp <= 0))

        n_stored = ts.n_stored + n_new - count_prefix(ended, ts.n_stored, t_len)
    new_ts = TrajectoryState(
        seq=seq_slots,
        start=start_rec,
        n_traj=n_traj,
        last=x[:, -1, :].astype(ts.last.dtype),
        rec_head=rec_head,
        n_stored=jnp.where(ring.count > 0, n_stored, 0),
    )
    # The start of each kept step's trajectory: the last step begun in this add up to it, else
    # the ongoing one (reading it back from the records just written was a dependent gather
    # after their scatter).
    begun = begun[:, skip:]
    start_k = jnp.where(begun >= 0, total + begun, ongoing[:, None])
    written = Written(seq_k, start_k, jnp.broadcast_to(stamp_k, seq_k.shape), slot_k, record, new_k)
    return new_ts, written


def set_rows(arr, col, values):
    """``arr[l, col[l, j]] = values[l, j]`` for every lane ``l`` and ``j`` with ``0 <= col < C``
    (others dropped; the kept ``(l, col)`` must be distinct). ``arr``: ``[L, C, ...]``; ``col``:
    ``[L, n]`` int32; ``values``: ``[L, n, ...]``.

    Why not ``arr.at[lanes, col]``: a two-index scatter makes XLA:CPU build an ``[L * n, 2]``
    index array (a concatenate and a copy that cost more than the scatter); one flat index into
    the row-major array is the same write.
    """
    n_l, c = arr.shape[:2]
    rest = arr.shape[2:]
    lanes = jnp.arange(n_l, dtype=jnp.int32)[:, None]
    flat = jnp.where((col >= 0) & (col < c), lanes * c + col, n_l * c).reshape(-1)
    out = arr.reshape(n_l * c, *rest).at[flat].set(values.reshape(-1, *rest), mode="drop", unique_indices=True,
                                                   wrap_negative_indices=False)  # (flat is never negative)
    return out.reshape(arr.shape)


class LaneRanges(NamedTuple):
    """Stored trajectories per lane: numbers ``first[l] .. last[l]`` (``n_stored[l]`` of them;
    0 when the buffer is empty), all ``[L]`` int32; ``oldest``: ``[]`` stamp of the oldest stored
    step (the same in every lane)."""

    first: jax.Array
    last: jax.Array
    n_stored: jax.Array
    oldest: jax.Array


def count_prefix(pred, n, width: int, probes: int = 32):
    """Per lane, how many of entries ``j = 0 .. min(n, width) - 1`` satisfy ``pred`` (``pred(j)``:
    ``[L, k]`` int32 offsets -> bool, monotone in ``j``: True then False, so the count is where
    it turns False), for a prefix known to be at most ``width`` long (static).

    A search with ``probes`` probes per step (``ceil(log(width + 1) / log(probes + 1))`` steps:
    2 for ``width`` up to 1088 with 32 probes), each step one small gather-compare-sum that XLA
    fuses into one loop. Why: testing every entry (``[L, width]``) cost ~5 µs per 1,000 on
    CPU, and a binary search is ``log2(width)`` dependent steps, each its own kernel there."""
    n = jnp.minimum(n, width)
    lo = jnp.zeros_like(n)
    span = width  # the count lies in [lo, lo + span]
    while span > 0:
        stride = -(-(span + 1) // (probes + 1))
        k = min(probes, -(-(span + 1) // stride) - 1)
        j = lo[:, None] + stride * jnp.arange(1, k + 1, dtype=jnp.int32)[None, :] - 1
        inside = (j < n[:, None]) & pred(jnp.minimum(j, jnp.maximum(n[:, None] - 1, 0)))
        lo = lo + stride * jnp.sum(inside, axis=1, dtype=jnp.int32)
        span = stride - 1
    return lo


def search_first(live, n, cap: int):
    """Per query, the smallest ``j`` in ``[0, n)`` with ``live(j)`` True, ``n`` if none (``n``:
    int32 in ``[0, cap]``, any shape; ``live(j)``: offsets of that shape -> bool, monotone in
    ``j``: False then True). ``ceil(log2(cap + 1))`` steps, unrolled: a handful of tiny
    dependent reads per lane (a ``while_loop`` would cost a thunk launch per step on CPU)."""
    lo = jnp.zeros_like(n)
    hi = n  # invariant: the answer is in [lo, hi]
    for _ in range(max(int(cap).bit_length(), 1)):  # 2**steps > cap >= n: n + 1 outcomes
        mid = (lo + hi) // 2
        go = lo < hi
        ok = live(jnp.minimum(mid, jnp.maximum(n - 1, 0)))
        lo, hi = jnp.where(go & ~ok, mid + 1, lo), jnp.where(go & ok, mid, hi)
    return lo


def lane_ranges(ring, ts: TrajectoryState) -> LaneRanges:
    """O(L): the range of stored trajectory numbers of every lane."""
    last = ts.n_traj - 1
    return LaneRanges(ts.n_traj - ts.n_stored, last, ts.n_stored, ring.oldest_stamp)


def bounds(ring, ts: TrajectoryState, ranges: LaneRanges, lane, seq):
    """Stored part ``[begin, end)`` (stamps) of trajectories ``seq`` of lanes ``lane`` (flat lane
    numbers; any matching shapes). Only meaningful for stored trajectories
    (``ranges.first[lane] <= seq <= ranges.last[lane]``); length is ``end - begin``."""
    cap = ring.capacity
    rec = record_slot(ts, lane, seq, cap)
    true_start = ts.start[lane, rec]
    begin = ranges.oldest + jnp.maximum(true_start - ranges.oldest, 0)
    nxt = ts.start[lane, jnp.where(rec == cap - 1, 0, rec + 1)]
    end = jnp.where(seq - ranges.last[lane] < 0, nxt, ring.added)
    return begin, end


def lane_flat(layout, lane_idx: tuple):
    """Flat lane number of a lane index tuple (``()`` for ``ndim=1`` gives 0)."""
    if not layout.lanes:
        return jnp.zeros((), jnp.int32)
    return _ring.flat_index((*lane_idx, 0), layout.lanes, 1)


class SlotPosition(NamedTuple):
    """Where slots sit in their stored trajectories (all int32, the index's shape):
    ``seq`` trajectory number; ``before`` stored steps of the trajectory before the slot;
    ``after`` stored steps from the slot to the trajectory's end, the slot included;
    ``written`` (bool) whether the slot holds data."""

    seq: jax.Array
    before: jax.Array
    after: jax.Array
    written: jax.Array


def slot_position(ring, ts: TrajectoryState, index: tuple) -> SlotPosition:
    """Position of ``index = (*lane_idx, t)`` within its stored trajectory: O(1) per slot with the
    per-slot numbers (``init(..., per_slot=True)``), else O(log capacity) (a binary search).

    A slice of ``n`` steps starting at the slot stays in one trajectory and never crosses the
    write head or an unwritten slot iff ``written & (after >= n)``.
    """
    t = index[-1]
    lane = jnp.broadcast_to(lane_flat(ring.layout, index[:-1]), jnp.shape(t))
    ranges = lane_ranges(ring, ts)
    stamp = ring.stamp(t)
    if ts.seq is not None:
        seq = ts.seq[lane, t]
    else:  # the last stored trajectory beginning at or before the slot: a binary search
        cap = ring.capacity
        m = ranges.n_stored[lane]
        first = ranges.first[lane]

        def live(j):  # trajectory first + j ends after the slot
            nxt = ts.start[lane, record_slot(ts, lane, first + j + 1, cap)]
            return (j == m - 1) | (nxt - stamp > 0)

        seq = first + search_first(live, m, cap)
    begin, end = bounds(ring, ts, ranges, lane, seq)
    written = t < ring.count
    return SlotPosition(seq, jnp.where(written, stamp - begin, 0), jnp.where(written, end - stamp, 0), written)


def valid_start_mask(ring, ts: TrajectoryState, n):
    """``[*lanes, capacity]`` bool: slot ``t`` of a lane starts a valid ``n``-step slice (its
    trajectory has at least ``n`` stored steps from ``t`` on). O(L × capacity)."""
    layout = ring.layout
    cap = layout.capacity
    t = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (layout.n_lanes, cap))
    lane = jnp.broadcast_to(jnp.arange(layout.n_lanes, dtype=jnp.int32)[:, None], (layout.n_lanes, cap))
    lane_idx = _ring.lane_index(lane, layout.lanes) if layout.lanes else ()
    pos = slot_position(ring, ts, (*lane_idx, t))
    return (pos.written & (pos.after >= n)).reshape(*layout.lanes, cap)
