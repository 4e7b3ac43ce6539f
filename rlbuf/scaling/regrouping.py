"""Regrouping a lane-grouped buffer state (``rlbuf.shard``, ``PerWorkerReplayBuffer``) to another
number of groups, exactly: e.g. a checkpoint of 4 devices resumed on 2.

A grouped state stacks ``G`` plain buffer states on a leading axis; group ``g`` holds global lanes
``[g * L, (g + 1) * L)`` (``L = layout.lanes[0]``, the local first lane dim). ``G * L`` lanes
regroup into ``G'`` groups of ``L' = G * L / G'`` lanes by moving lanes, never data within a
lane, so every stored step, trajectory id and per-lane bookkeeping stays where a buffer of
``G'`` groups that received the same batches would hold it:

- storage leaves ``[G, L, ...]`` become ``[G', L', ...]`` (lanes in global order);
- the ring counters (``cursor``, ``count``, ``added``, one per group) of the groups that merge
  into one must be equal (always so for ``rlbuf.shard``, whose groups are written together;
  ``PerWorkerReplayBuffer`` workers that delivered different numbers of batches cannot merge:
  refused, naming the groups). Splitting a group copies its counters;
- sampler and writer states: empty ones (``RandomSampler``, ``RoundRobinWriter``) trivially;
  states whose class declares ``lane_major = True`` (every leaf ``[n_lanes, ...]`` with the
  lanes flattened row-major, or a per-group scalar that must agree, e.g. the slice samplers'
  ``SliceState``) like the storage. Others (the permutation of ``SamplerWithoutReplacement``,
  priority trees, ``MaxValueWriter``'s ranks) number items group-locally and are refused,
  naming their class.

``ndim=1`` buffers have no lane axis (each group's ring interleaves its share of every batch),
so only ``G' = G`` is possible. ``compact_next`` storages are refused (their final-observation
table is per group).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.buffers.replay_buffer import BufferState

__all__ = ["regroup"]


def _groups_of(state: BufferState, who: str) -> int:
    if not isinstance(state, BufferState):
        raise TypeError(f"{who}: expected a grouped BufferState, got {type(state).__name__}")
    shape = np.shape(state.count)
    if len(shape) != 1:
        raise ValueError(
            f"{who}: the state's count has shape {shape}, not [G]: not a grouped state (rlbuf.shard or "
            "PerWorkerReplayBuffer)"
        )
    return shape[0]


def new_layout(layout, g: int, n: int, who: str = "rlbuf.regroup"):
    """The per-group layout of ``n`` groups for a per-group ``layout`` of ``g`` groups."""
    if n == g:
        return layout
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{who}: n_groups must be a positive int, got {n!r}")
    if not layout.lanes:
        raise ValueError(
            f"{who}: saved with {g} groups, restoring into {n}: an ndim=1 buffer has no lane axis to "
            "regroup (each group's ring interleaves its share of every batch); use the same group count"
        )
    total = g * layout.lanes[0]
    if total % n:
        raise ValueError(
            f"{who}: saved with {g} groups of {layout.lanes[0]} lanes ({total} lanes), which do not split "
            f"evenly into {n} groups"
        )
    return dataclasses.replace(layout, lanes=(total // n, *layout.lanes[1:]))


def _move_lanes(x, g: int, n: int, lead: int):
    """``[g, lead, ...]`` (lane axis first after the group axis) as ``[n, g * lead / n, ...]``."""
    return jnp.reshape(x, (n, g * lead // n, *np.shape(x)[2:]))


def _part(tree, g: int, n: int, layout, who: str, what: str, check: bool):
    """Regroup a sampler or writer state (see the module docstring)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return tree
    if not getattr(type(tree), "lane_major", False):
        raise ValueError(
            f"{who}: saved with {g} groups, restoring into {n}: the {what} state ({type(tree).__name__}) numbers "
            "items within each group, so it cannot be regrouped exactly; regrouping supports empty "
            "states (RandomSampler, RoundRobinWriter) and lane-major ones (slice samplers)"
        )
    n_l = layout.n_lanes

    def one(x):
        shape = np.shape(x)
        if len(shape) == 1:  # per-group scalar
            return _agree(x, g, n, layout.lanes[0], who, f"{what} state", check)
        if shape[1] != n_l:
            raise ValueError(f"{who}: {what} state leaf of shape {shape} is not [G, n_lanes={n_l}, ...]")
        return _move_lanes(x, g, n, n_l)

    return jax.tree_util.tree_map(one, tree)


def _agree(x, g: int, n: int, lead: int, who: str, what: str, check: bool):
    """A per-group value ``[g]`` (groups of ``lead`` lanes) for ``n`` groups: every old group
    that gives lanes to a new one must hold the same value (a split copies it)."""
    per_lane = jnp.reshape(jnp.repeat(x, lead, axis=0), (n, g * lead // n))
    if check:
        b = np.asarray(per_lane)
        bad = np.nonzero(~np.all(b == b[:, :1], axis=1))[0]
        if bad.size:
            j = int(bad[0])
            src = sorted({int(i) // lead for i in range(j * b.shape[1], (j + 1) * b.shape[1])})
            raise ValueError(
                f"{who}: saved with {g} groups, restoring into {n}: groups {src} merge into new group {j} but their "
                f"{what} differ ({np.asarray(x)[src].tolist()}); only groups written in step (rlbuf.shard, or "
                "workers that delivered equally many batches) can merge"
            )
    return per_lane[:, 0]


def regroup_abstract(state: BufferState, n_groups: int, who: str = "rlbuf.regroup", check: bool = True):
    """:func:`regroup` without the value checks when ``check`` is False (for ``jax.eval_shape``)."""
    g = _groups_of(state, who)
    n = n_groups
    layout = new_layout(state.layout, g, n, who)
    if n == g:
        return state
    if jax.tree_util.tree_structure(state.storage) != state.layout.treedef:
        raise ValueError(
            f"{who}: saved with {g} groups, restoring into {n}: a compact_next storage keeps a final-observation "
            "table per group and cannot be regrouped"
        )
    lead = state.layout.lanes[0]
    storage = jax.tree_util.tree_map(lambda x: _move_lanes(x, g, n, lead), state.storage)
    ring = {k: _agree(getattr(state, k), g, n, lead, who, f"ring counter {k!r}", check)
            for k in ("cursor", "count", "added")}
    return BufferState(
        storage=storage,
        sampler=_part(state.sampler, g, n, state.layout, who, "sampler", check),
        writer=_part(state.writer, g, n, state.layout, who, "writer", check),
        layout=layout,
        **ring,
    )


def regroup(state: BufferState, n_groups: int) -> BufferState:
    """A grouped buffer state (leading ``[G]`` axis, as ``rlbuf.shard`` and
    ``PerWorkerReplayBuffer`` keep) regrouped into ``n_groups`` groups, exactly (see
    :mod:`rlbuf.scaling.regrouping`): the lanes are redistributed in global order, so the result is the
    state a buffer of ``n_groups`` groups would hold after the same batches.

    Args:
      state: a grouped ``BufferState`` (e.g. restored from a checkpoint of another device or
        worker count); its arrays are read (eager, not for use under ``jit``).
      n_groups: the new group count ``G'``; the ``G * L`` lanes must split evenly into it
        (``L`` the first local lane dim).

    Returns:
      The ``BufferState`` with leaves ``[G', ...]`` and ``layout.lanes[0] = G * L / G'``,
      uncommitted (place it with ``jax.device_put(state, srb.sharding)`` for a sharded buffer).

    Raises:
      ValueError: naming both group counts, when the regrouping cannot be exact.
    """
    return regroup_abstract(state, n_groups, "rlbuf.regroup", check=True)
