"""What the lane-group buffers share (:mod:`rlbuf.scaling.sharding`'s ``ShardedReplayBuffer`` and
:mod:`rlbuf.scaling.per_worker`'s ``PerWorkerReplayBuffer``): splitting a buffer into ``n`` groups,
checking a global batch once, and moving indices between a group and the whole."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _tree
from rlbuf.buffers.protocols import SplittableBuffer


def _split_buffer(rb: SplittableBuffer, n: int, who: str) -> SplittableBuffer:
    """The buffer one of ``n`` lane groups runs: ``rb.split(n)`` (a ``ReplayBuffer``'s storage,
    sampler and writer each split by their own ``split``)."""
    if not isinstance(rb, SplittableBuffer):
        raise TypeError(f"{who}: expected a buffer (rlbuf.buffers.protocols.SplittableBuffer, e.g. a ReplayBuffer), "
                        f"got {type(rb).__name__}")
    return rb.split(n, who)


def _stored(rb: SplittableBuffer, data: Any, who: str) -> Any:
    """``data`` as ``rb.add`` would store it: TorchRL-style tuple keys turned into nesting, list
    leaves into arrays, and only ``rb.keys`` kept. Done once on the global batch, so the checks
    below see what is stored and the groups receive only stored keys (``nest``/``keys`` are
    idempotent: the groups' own ``add`` finds nothing left to do)."""
    return rb.stored(data, who)


def _local_example(example: Any, ndim: int, n: int, who: str) -> Any:
    """One group's part of an ``add`` example: the leading lane dim divided by ``n``."""

    def cut(key, x):
        shape, dtype = _tree.leaf_spec(x)
        if ndim == 1:
            return jax.ShapeDtypeStruct(shape, dtype)
        if not shape or shape[0] % n:
            raise ValueError(
                f"{who}: leaf {_tree.key_str(key)} has shape {shape}; its leading lane dim must be "
                f"divisible by the {n} groups"
            )
        return jax.ShapeDtypeStruct((shape[0] // n, *shape[1:]), dtype)

    items = _tree.leaves_with_keys(example)
    leaves = [cut(k, x) for k, x in items]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(example), leaves)


def _check_global(rb: SplittableBuffer, layout, data: Any, n: int, who: str) -> None:
    """Trace-time validation of an ``add`` batch against the *global* layout, so errors name
    the shapes the user passed, not a group's."""
    if layout.ndim >= 2:
        glob = dataclasses.replace(layout, lanes=(layout.lanes[0] * n, *layout.lanes[1:]))
        rb.check(glob, data)
    else:
        rb.check(layout, data)
        for key, x in _tree.leaves_with_keys(data):
            if np.shape(x)[0] % n:
                raise ValueError(
                    f"{who}.add: key {_tree.key_str(key)} has {np.shape(x)[0]} transitions, not "
                    f"divisible by the {n} groups (ndim=1 splits the transition axis)"
                )


def _check_groups(state: Any, n: int, who: str, what: str) -> None:
    """Trace-time check that every leaf of a grouped ``state`` has the leading group axis ``n``
    (``what`` names where ``n`` comes from); a state of another group count (e.g. restored from a
    checkpoint of another device or worker count) would otherwise be silently misread."""
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        shape = np.shape(x)
        if not shape or shape[0] != n:
            got = shape[0] if shape else "no"
            raise ValueError(
                f"{who}: the state has {got} groups (leading axis of state{jax.tree_util.keystr(path)}, "
                f"shape {shape}) but {what}; regroup it first (rlbuf.regroup(state, {n}) or "
                f"rlbuf.checkpoint.restore(..., regroup=True))"
            )


def _offset_index(index: Any, layout, g) -> Any:
    """A group's sampler index made global: the first lane index (``ndim >= 2``) or the ring
    slot (``ndim = 1``) offset by the group's start, i.e. an index into the groups' storages
    merged along their first axis (:meth:`ShardedReplayBuffer.global_storage`)."""
    if layout.lanes:
        return (index[0] + g * layout.lanes[0], *index[1:])
    return index + g * layout.capacity


def _ignore_foreign(index: tuple, owned, priority):
    """``(index, priority)`` for one group's ``update_priority``: entries that another group owns
    get the time index -1, which every sampler ignores (``Sampler.update_priority``: out-of-range
    entries are skipped), so no branch on "does this group own any entry" is needed."""
    priority = jnp.broadcast_to(jnp.asarray(priority), owned.shape)
    return (*index[:-1], jnp.where(owned, index[-1], -1)), priority


def _own_index(index: Any, layout, g, priority):
    """Inverse of :func:`_offset_index` for ``update_priority``: the group-local index, entries of
    other groups ignored (:func:`_ignore_foreign`)."""
    index = index if isinstance(index, tuple) else (index,)
    span = layout.lanes[0] if layout.lanes else layout.capacity
    first = index[0] - g * span
    owned = (first >= 0) & (first < span)
    local, priority = _ignore_foreign((first, *index[1:]), owned, priority)
    return (local if layout.lanes else local[0]), priority


def _rank1(x):
    return x if jnp.ndim(x) else x[None]
