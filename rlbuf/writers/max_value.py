"""``MaxValueWriter`` (alias ``TensorDictMaxValueWriter``): keep the ``capacity`` items of
highest rank, under jit.

Each ``add`` selects, once, the top-``capacity`` items of (stored items ∪ new items) by rank
(``lax.top_k``) and writes the selected new items into the slots of the evicted ones. Stored
items never move, so the storage write is a plain scatter; the free slots are filled in
ascending order, which keeps the buffer's invariant that the written slots are
``[0, count)`` (empty slots are ranked below every item, so they are filled first).

Storages with lanes (``ndim > 1``, items ``[*lanes, T]``) rank **per lane**: each lane keeps
its own top-``capacity`` of its stored items and the ``T`` items the add brings to that lane;
items never compete across lanes (a lane is one env's stream, as in the round-robin layout).
Every lane receives ``T`` items per add, so all lanes share one ``count`` and each lane's
written slots are ``[0, count)``. This is what makes ``rlbuf.shard``/``PerWorkerReplayBuffer``
exact (a group's lanes rank alone). TorchRL refuses ``ndim > 1`` here; a global top-k over
all lanes would need lanes of unequal fill. The writer then reports per-lane slots:
``WriteInfo.positions`` ``[*lanes, T]``.

Tie rule (deterministic): on equal ranks a stored item beats a new one (as in TorchRL, where
an item replaces the minimum only if its rank is strictly larger), among stored items the
lower slot wins, and among new items the earlier one (in data order) wins.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rlbuf import _fields, _reduce, _ring, _tree
from rlbuf.writers.base import WriteInfo, Writer

_EMPTY = jnp.iinfo(jnp.int32).min  # rank key of an empty slot: below every item


def _order_key(rank):
    """float32 ranks as int32 keys with the same order (NaN treated as ``-inf``); every key
    is above ``_EMPTY``, so even an item ranked ``-inf`` fills an empty slot."""
    r = jnp.where(jnp.isnan(rank), -jnp.inf, rank).astype(jnp.float32)
    r = jnp.where(r == 0, 0.0, r)  # -0.0 == 0.0
    i = jax.lax.bitcast_convert_type(r, jnp.int32)
    return jnp.where(i >= 0, i, i ^ jnp.int32(0x7FFFFFFF))


@dataclasses.dataclass(frozen=True)
class MaxValueWriter(Writer):
    """Keeps the ``capacity`` items with the largest ``rank_key`` value.

    Args:
      rank_key: key of the rank in each item (``("next", "reward")`` by default). A leaf
        with trailing dims (e.g. ``[T, 1]`` or a per-item vector) is reduced to a scalar per
        item with ``reduction``.
      reduction: ``"sum"`` (default), ``"mean"``, ``"max"``, ``"min"`` or ``"median"`` (the lower
        median, as ``torch.median``) over the trailing dims (TorchRL's ``reduction``).

    Any ``ndim``: with ``ndim > 1`` (items ``[*lanes, T, ...]``) each lane keeps its own top
    ``capacity`` items (module docstring). Ranks are compared as float32; NaN ranks count as
    ``-inf``.

    State (``BufferState.writer``): ``rank`` ``[*lanes, capacity]`` int32 order keys of the
    stored items (an empty slot holds the minimum int32); ``[capacity]`` for ``ndim=1``.

    ``WriteInfo.positions`` has one entry per data item: its slot, or ``capacity + j`` (``j`` its
    position in the batch) for an item that is not kept; ``[T]`` for ``ndim=1``, ``[*lanes,
    T]`` (each lane's own slots) otherwise. ``cursor`` is ``count % capacity``
    (meaningless for ranking, kept so that ring helpers stay well defined). It does not
    provide ``"time_order"``, so samplers that rely on round-robin order (slice samplers) and
    ``compact_next`` storage are refused at ``ReplayBuffer.init``; uniform, without-replacement
    and prioritized samplers work (a prioritized sampler gives each written slot the max
    priority). Under ``rlbuf.shard``/``PerWorkerReplayBuffer`` each group ranks alone: per lane
    as above for ``ndim > 1``; for ``ndim=1`` each group keeps the top ``capacity / G`` of the
    transitions it receives.
    """

    rank_key: Any = _fields.key(("next", "reward"))
    reduction: str = "sum"

    def __post_init__(self):
        _reduce.check(self.reduction, "MaxValueWriter")

    def check(self, layout) -> None:
        try:
            layout.spec(self.rank_key)
        except KeyError:
            stored = ", ".join(_tree.key_str(k) for k in layout.keys())
            raise ValueError(
                f"MaxValueWriter: rank_key {_tree.key_str(self.rank_key)} is not stored in the buffer "
                f"(stored keys: {stored})"
            ) from None
        shape, dt = layout.spec(self.rank_key)
        if dt.kind not in "fiub":
            raise TypeError(f"MaxValueWriter: rank_key {_tree.key_str(self.rank_key)} has non-numeric dtype {dt}")
        if 0 in shape:
            raise ValueError(f"MaxValueWriter: rank_key {_tree.key_str(self.rank_key)} has no elements per item "
                             f"(trailing shape {shape})")

    def init(self, layout):
        self.check(layout)
        return {"rank": jnp.full((*layout.lanes, layout.capacity), _EMPTY, jnp.int32)}

    def item_rank(self, data, ndim: int = 1):
        """float32 ``[*lanes, T]`` rank of each item of ``data`` (leaves ``[*lanes, T, ...]``,
        ``ndim`` batch dims): the rank key reduced over its trailing dims with ``reduction``."""
        x = _tree.get(data, self.rank_key).astype(jnp.float32)
        x = x.reshape(*x.shape[:ndim], -1)
        if x.shape[-1] == 0:
            raise ValueError(f"MaxValueWriter: rank_key {_tree.key_str(self.rank_key)} has no elements per item")
        return _reduce.reduce_trailing(x, ndim, self.reduction)

    def write(self, ring, wstate, data):
        cap, lanes = ring.capacity, ring.lanes
        new = _order_key(self.item_rank(data, ring.layout.ndim))
        t_len = new.shape[-1]
        if lanes:  # each lane its own top-k: the one-lane selection mapped over the flat lanes
            positions, rank = jax.vmap(lambda s, n: _select(s, n, cap))(
                wstate["rank"].reshape(-1, cap), new.reshape(-1, t_len))
            positions, rank = positions.reshape(*lanes, t_len), rank.reshape(*lanes, cap)
        else:
            positions, rank = _select(wstate["rank"], new, cap)
        new_count = _ring.add_count(ring.count, t_len, cap).astype(jnp.int32)
        info = WriteInfo(positions, 0, ring.cursor, ring.count, new_count % cap, new_count)
        return info, {"rank": rank}, data


def _select(stored, new, cap: int):
    """One lane: ``(positions [T], rank [cap])`` after keeping the top ``cap`` of ``stored``
    (order keys ``[cap]``) ∪ ``new`` (``[T]``); see the module docstring for slots and ties."""
    t_len = new.shape[0]
    # One top-k over (stored ∪ new): stored first, so ties keep the stored items
    # (top_k prefers the lower index on ties).
    _, sel = jax.lax.top_k(jnp.concatenate([stored, new]), cap)
    chosen = jnp.zeros((cap + t_len,), bool).at[sel].set(True, unique_indices=True)
    take = chosen[cap:]
    # Free slots ascending: evicted slots (< count) first, then the empty ones from count
    # on (all empty slots count as free, whichever of the tied empties top_k picked).
    free = ~chosen[:cap] | (stored == _EMPTY)
    free_slots = jnp.nonzero(free, size=cap, fill_value=cap)[0].astype(jnp.int32)
    r = jnp.cumsum(take.astype(jnp.int32)) - 1
    j = jnp.arange(t_len, dtype=jnp.int32)
    positions = jnp.where(take, free_slots[jnp.clip(r, 0, cap - 1)], cap + j)
    return positions, stored.at[positions].set(new, mode="drop", unique_indices=True)


TensorDictMaxValueWriter = MaxValueWriter
