"""``compact_next``: each observation stored once, ``("next", k)`` rebuilt at sample time.

``LazyTensorStorage(max_size, ndim, compact_next=True)`` builds a :class:`CompactTensorStorage`.
A ``("next", k)`` leaf whose ``k`` is stored too (same trailing shape and dtype) is not kept:
step ``t``'s next observation is, in order of precedence,

1. the *head row* when ``t`` is the newest step of the ring (the newest step's next
   observation arrives with it; nothing follows it yet);
2. a row of the per-lane *final-observation table* when the step is a *break*: its next
   observation differs from the observation of the following stored step, or it is done
   (``("next", "done")`` when stored). Done steps of auto-resetting envs and the last step
   of a batch whose next ``add`` does not continue it (``reset_at_each_iter``: detected at
   that ``add`` by comparing the head row with the new first observation) are breaks;
3. otherwise the observation of the following physical slot ``(t + 1) % capacity`` of the
   same lane (round-robin writing puts the next step there, also across the ring's end).

Because breaks are detected by comparing the data's bits (``-0.0`` is not ``+0.0``, NaNs
compare by payload), the rebuilt batch equals the stored one bit for bit whatever the done
flags say. A break is not an episode boundary, though: a final observation equal to the next
episode's reset observation is no break (nothing needs rebuilding), so ``rlbuf.FrameStack``
needs trajectory ids or done flags to see every start (it warns at ``init`` otherwise).

Memory: each compacted ``k`` is one array ``[*lanes, capacity + F + 1, ...]``: the ring's
``capacity`` slots, then ``F`` table rows, then the head row. ``F`` (rows per lane) is
``ceil(final_obs_size / n_lanes)``, by default ``ceil(capacity / 8)``: enough for episodes of
8 steps on average. When a lane stores more breaks than ``F``, the oldest lose their row;
those items are never sampled: ``valid`` is False for them, and ``ReplayBuffer.sample``
has the sampler redraw every item (or slice) holding one (``Sampler.draw``: the sampler's
distribution restricted to the other items; prioritized samplers also zero their priority).
Samplers without replacement cannot redraw: for them such items are masked (zeros,
``info["mask"]`` False). ``CompactState.lost`` counts them.

Requires a time-ordered writer (``RoundRobinWriter``): ``ReplayBuffer.init`` refuses others.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _ring, _tree
from rlbuf.storages.base import Layout
from rlbuf.storages.tensor import LazyTensorStorage

NEXT = "next"
DONE = (NEXT, "done")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CompactState:
    """Arrays of a ``compact_next`` storage (a pytree, kept in ``BufferState.storage``).

    - ``data``: nested dict of the stored leaves, ``[*lanes, capacity, ...]``, without the
      compacted ``("next", k)`` leaves; each compacted ``k`` is ``[*lanes, capacity + F + 1,
      ...]`` (ring slots, final-observation table rows, head row). ``data[k][index]`` is the
      sampled ``batch[k]`` for ``index = info["index"]``;
    - ``entry``: int32 ``[*lanes, capacity]``, the table row (``0..F-1``) holding the slot's
      next observation; ``-1``: not a break (the next slot holds it); ``-2``: a break that got
      no row (more breaks in one ``add`` than ``F``);
    - ``owner``: int32 ``[*lanes, F]``, the slot whose next observation a table row holds
      (``-1`` for none); a slot whose row now belongs to another slot lost it;
    - ``table_cursor``: int32 ``[*lanes]``, the next table row to fill (a ring per lane);
    - ``newest``: int32 ``[]``, physical slot of the newest step (``-1`` while empty);
    - ``lost``: int32 ``[]``, breaks that lost (or never got) their table row while their
      step was stored (cumulative; such items are never sampled).
    """

    data: Any
    entry: jax.Array
    owner: jax.Array
    table_cursor: jax.Array
    newest: jax.Array
    lost: jax.Array


def compacted_keys(layout) -> list:
    """Keys ``k`` (tuples) whose ``("next", *k)`` is rebuilt: both stored, same shape and dtype."""
    specs = {k: (s, d) for k, s, d in layout.specs}
    return [k for k, s, d in layout.specs if k[0] != NEXT and specs.get((NEXT, *k)) == (s, d)]


def table_rows(storage, layout) -> int:
    """Final-observation rows per lane (``F``)."""
    if storage.final_obs_size is None:
        return max(1, math.ceil(layout.capacity / 8))
    return max(1, math.ceil(storage.final_obs_size / layout.n_lanes))


def _stored_specs(layout):
    dropped = {(NEXT, *k) for k in compacted_keys(layout)}
    return [(k, s, d) for k, s, d in layout.specs if k not in dropped]


def _init(storage, layout) -> CompactState:
    """Zero-filled arrays (unwritten slots and rows read as zeros)."""
    if not compacted_keys(layout):
        raise ValueError(
            "LazyTensorStorage(compact_next=True): no ('next', k) leaf has a stored k of the same shape "
            f"and dtype to rebuild it from (stored: {[_tree.key_str(k) for k in layout.keys()]})"
        )
    F = table_rows(storage, layout)
    compact = set(compacted_keys(layout))
    data: dict = {}
    for k, shape, dtype in _stored_specs(layout):
        rows = layout.capacity + (F + 1 if k in compact else 0)
        data = _tree.set_in(data, k, storage.to_storage(jnp.zeros((*layout.lanes, rows, *shape), dtype)))
    lanes = layout.lanes
    return CompactState(
        data=data,
        entry=jnp.full((*lanes, layout.capacity), -1, jnp.int32),
        owner=jnp.full((*lanes, F), -1, jnp.int32),
        table_cursor=jnp.zeros(lanes, jnp.int32),
        newest=jnp.full((), -1, jnp.int32),
        lost=jnp.zeros((), jnp.int32),
    )


def _lanes_first(x, layout):
    """``[*lanes, R, ...]`` as ``[L, R, ...]`` (``L = 1`` for ``ndim=1``)."""
    return x.reshape(layout.n_lanes, *x.shape[layout.ndim - 1 :])


def _bits(x):
    """``x`` as integers of its bit patterns (floats; complex: real and imaginary parts), so that
    comparing them tells ``-0.0`` from ``+0.0`` and one NaN payload from another: the rebuilt
    next observation must be the stored one bit for bit."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.stack([_bits(jnp.real(x)), _bits(jnp.imag(x))], axis=-1)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    return x


def _differ(a, b):
    """Elementwise: ``a`` and ``b`` have different bits."""
    return _bits(a) != _bits(b)


def _any_trailing(x, lead: int):
    return jnp.any(x, axis=tuple(range(lead, x.ndim))) if x.ndim > lead else x


def _write(storage, layout, st: CompactState, positions, data: Any, skip: int = 0) -> CompactState:
    """Write ``data[..., skip:, ...]`` at time slots ``positions``; table rows for its breaks."""
    cap, F, L = layout.capacity, table_rows(storage, layout), layout.n_lanes
    n = positions.shape[0]
    compact = compacted_keys(layout)
    lane = jnp.arange(L, dtype=jnp.int32)[:, None]

    def steps(key):  # data[key] as [L, n, ...] (skipped steps removed)
        x = _lanes_first(_tree.get(data, key), layout)
        return x[:, skip:] if skip else x

    obs = {k: steps(k) for k in compact}
    nxt = {k: steps((NEXT, *k)) for k in compact}
    host, device = storage.to_storage, storage.to_device  # host memory: data there, bookkeeping here
    head = {k: device(_lanes_first(_tree.get(st.data, k), layout)[:, cap + F]) for k in compact}  # [L, ...]

    # Breaks inside the batch: next observation != the following step's observation, or done.
    brk = jnp.zeros((L, n), bool)
    for k in compact:
        mism = _any_trailing(_differ(nxt[k][:, :-1], obs[k][:, 1:]), 2)
        brk = brk | jnp.pad(mism, ((0, 0), (0, 1)))
    if any(k == DONE for k in layout.keys()):
        brk = brk | _any_trailing(steps(DONE).astype(bool), 2)
    # The previous newest step: a break if this add does not continue it. Only when it
    # survives this write (n < cap; skip > 0 means n == cap) and has no row yet (done steps
    # got one at their own add).
    newest = st.newest
    has_row = _lanes_first(st.entry, layout)[:, jnp.maximum(newest, 0)] != -1
    hb = jnp.zeros((L,), bool)
    if n < cap:
        for k in compact:
            hb = hb | _any_trailing(_differ(head[k], obs[k][:, 0]), 1)
        hb = hb & (newest >= 0) & ~has_row

    cand = jnp.concatenate([hb[:, None], brk], axis=1)  # [L, n + 1]
    slot = jnp.concatenate([jnp.broadcast_to(newest, (L, 1)), jnp.broadcast_to(positions, (L, n))], axis=1)
    rank = jnp.cumsum(cand, axis=1, dtype=jnp.int32) - 1
    m = rank[:, -1:] + 1
    keep = cand & (rank >= m - F) & (slot < cap) & (slot >= 0)
    tcur = _lanes_first(st.table_cursor, layout)[:, None]
    row = (tcur + rank) % F

    entry = _lanes_first(st.entry, layout)
    owner = _lanes_first(st.owner, layout)
    # Entries of the slots rewritten now are gone (their step is overwritten, not lost).
    entry = entry.at[:, positions].set(-1, mode="drop")
    old_owner = jnp.take_along_axis(owner, row, axis=1)
    still = jnp.take_along_axis(entry, jnp.maximum(old_owner, 0), axis=1) == row
    lost = st.lost + jnp.sum(keep & (old_owner >= 0) & still, dtype=jnp.int32)
    lost = lost + jnp.sum(cand & ~keep & (slot >= 0) & (slot < cap), dtype=jnp.int32)
    row_or_drop = jnp.where(keep, row, F)  # F is out of range: dropped
    in_ring = (slot >= 0) & (slot < cap)
    entry = entry.at[lane, jnp.where(cand & in_ring, slot, cap)].set(jnp.where(keep, row, -2), mode="drop")
    owner = owner.at[lane, row_or_drop].set(slot, mode="drop")

    out: dict = {}
    compact_set = set(compact)
    pos_h = host(positions)
    if compact:
        lane_h, rows_h = host(lane), host(jnp.where(keep, cap + row, cap + F + 1))
    for k, _, _ in _stored_specs(layout):
        buf = _lanes_first(_tree.get(st.data, k), layout)
        x = steps(k)
        buf = buf.at[:, pos_h].set(host(x), mode="drop", unique_indices=True)
        if k in compact_set:
            vals = jnp.concatenate([head[k][:, None], nxt[k]], axis=1)  # [L, n + 1, ...]
            # Out-of-range rows (cap + F + 1) are dropped; the head row cap + F is never hit.
            buf = buf.at[lane_h, rows_h].set(host(vals), mode="drop")
            buf = buf.at[:, cap + F].set(host(nxt[k][:, -1]))
        out = _tree.set_in(out, k, buf.reshape(*layout.lanes, *buf.shape[1:]))
    new_t = (tcur[:, 0] + m[:, 0]) % F
    return CompactState(
        data=out,
        entry=entry.reshape(*layout.lanes, cap),
        owner=owner.reshape(*layout.lanes, F),
        table_cursor=new_t.reshape(layout.lanes),
        newest=jnp.where(positions[-1] < cap, positions[-1], newest).astype(jnp.int32),
        lost=lost,
    )


def _lane_flat(index: tuple, layout):
    if not layout.lanes:
        return jnp.zeros_like(index[0])
    return _ring.flat_index((*index[:-1], jnp.zeros_like(index[-1])), layout.lanes, 1)


def _rows(storage, layout, st: CompactState, index: tuple):
    """``(lane, row of the next observation, valid)`` for items ``index``."""
    cap, F = layout.capacity, table_rows(storage, layout)
    t = index[-1]
    lane = _lane_flat(index, layout)
    e = _lanes_first(st.entry, layout)[lane, t]
    own = _lanes_first(st.owner, layout)[lane, jnp.maximum(e, 0)]
    is_head = t == st.newest
    after = jnp.where(t + 1 >= cap, 0, t + 1)
    row = jnp.where(is_head, cap + F, jnp.where(e >= 0, cap + e, after))  # e == -2: masked anyway
    valid = is_head | (e == -1) | ((e >= 0) & (own == t))
    return lane, row, valid


def _gather(storage, layout, st: CompactState, index: tuple) -> Any:
    """Items at ``index = (*lane_idx, t)`` (int arrays of one shape ``S``): every leaf of the
    ``add`` batches, ``[*S, ...]``, the compacted ``("next", k)`` rebuilt."""
    lane, nrow, _ = _rows(storage, layout, st, index)
    t = index[-1]
    compact = set(compacted_keys(layout))
    leaves = []
    # Host memory: the (lane, row) indices go there, only the gathered items come back. Never
    # one flat lane * rows + row position: it may pass the int32 range.
    rows = {False: (storage.to_storage(lane), storage.to_storage(t))}
    for k, _, _ in layout.specs:
        src = k[1:] if k[0] == NEXT and k[1:] in compact else k
        x = _lanes_first(_tree.get(st.data, src), layout)
        if src != k and True not in rows:
            rows[True] = (rows[False][0], storage.to_storage(nrow))
        # (jnp.asarray: a host-side state of numpy arrays, e.g. what to_minari exports, gathers too)
        leaves.append(storage.to_device(jnp.asarray(x).at[rows[src != k]].get(mode="clip")))
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


def nbytes(st: CompactState) -> int:
    """Bytes of every array of the storage state."""
    return int(sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree_util.tree_leaves(st)))


@dataclasses.dataclass(frozen=True)
class CompactTensorStorage(LazyTensorStorage, variant="compact_next"):
    """``LazyTensorStorage`` keeping each ``("next", k)`` whose ``k`` is stored too only once
    (module docstring); built by ``LazyTensorStorage(max_size, ndim, compact_next=True, ...)``.

    Args:
      max_size: as ``LazyTensorStorage``.
      ndim: as ``LazyTensorStorage``.
      compact_next: always True (the flag that selects this class).
      final_obs_size: rows of the final-observation table over all lanes (``None``:
        ``ceil(capacity / 8)`` per lane, enough for episodes of 8 steps on average; items that
        lose their row are never sampled and are counted in ``CompactState.lost``).
      memory_kind: as ``LazyTensorStorage`` (frames and table rows in host memory, the
        bookkeeping on the device; each ``add`` brings back only the head row it compares
        with the new batch).
    """

    compact_next: bool = dataclasses.field(default=True, kw_only=True)
    final_obs_size: Optional[int] = dataclasses.field(default=None, kw_only=True)

    #: Rows are rebuilt from the following step: the writer must write in time order.
    requires = frozenset({"time_order"})

    def __post_init__(self):
        super().__post_init__()
        if self.compact_next is not True:
            raise ValueError(f"CompactTensorStorage: compact_next must be True, got {self.compact_next!r}")
        fs = self.final_obs_size
        if fs is not None and (isinstance(fs, bool) or not isinstance(fs, (int, np.integer)) or fs <= 0):
            raise ValueError(f"LazyTensorStorage: final_obs_size must be a positive int or None, got {fs!r}")

    def split(self, n_groups: int) -> "CompactTensorStorage":
        out = super().split(n_groups)
        if self.final_obs_size is not None:
            out = dataclasses.replace(out, final_obs_size=-(-self.final_obs_size // n_groups))
        return out

    def init(self, layout: Layout) -> CompactState:
        return _init(self, layout)

    def write(self, layout: Layout, storage: CompactState, positions, data: Any, skip: int = 0) -> CompactState:
        return _write(self, layout, storage, positions, data, skip)

    def gather(self, layout: Layout, storage: CompactState, index: tuple) -> Any:
        return _gather(self, layout, storage, index)

    def valid(self, layout: Layout, storage: CompactState, index: tuple):
        """Bool ``[*S]``: False for items whose next observation was lost from the table."""
        return _rows(self, layout, storage, index)[2]

    @property
    def reports_breaks(self) -> bool:
        return True

    def breaks(self, layout: Layout, storage: CompactState, index: tuple):
        """Bool ``[*S]``: the step at ``index`` does not continue into the following slot (a break
        with or without a table row)."""
        return _lanes_first(storage.entry, layout)[_lane_flat(index, layout), index[-1]] != -1
