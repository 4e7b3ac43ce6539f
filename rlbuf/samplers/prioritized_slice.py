"""``PrioritizedSliceSampler``: slices whose start is drawn in proportion to its priority,
among the starts that give a valid slice under ``SliceSampler``'s boundary rules.

Per-step priorities live in the state (``(p + eps) ** alpha`` per flat slot ``lane *
capacity + t``). The sum/min tree holds ``priority * valid_start`` where ``valid_start`` is
"a slice of ``slice_len`` steps starting here stays in one stored trajectory and crosses
neither the write head nor an unwritten slot" (``strict_length=True``), computed with the
slice samplers' bookkeeping (``rlbuf.samplers._trajectories.slot_position``). Validity only
changes near a write, so ``on_write`` recomputes the leaves of the ``slice_len + T`` starts
around the ``T`` written steps of each lane: O(lanes × (T + slice_len) × log N) per add, and
sampling stays O(num_slices × log N).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from rlbuf import _ring
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.prioritized import BRANCHING, check_capacity, check_config, check_priority, sanitize
from rlbuf.samplers.slice import SliceSampler, check_slice_config
from rlbuf.samplers.sumtree import SumTree, TreeState, last_wins


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrioritizedSliceState:
    """- ``traj``: trajectory-boundary bookkeeping (shared with the slice samplers).
    - ``prio``: ``[n_lanes * capacity]`` per-step tree value ``(p + eps) ** alpha``.
    - ``tree``: sum/min tree of ``prio * valid_start(thr)``.
    - ``max_priority``: largest raw priority passed to ``update_priority`` (``-inf`` before).
    - ``cursor`` / ``count``: the ring after the last add (to judge validity in
      ``update_priority``, which does not see the buffer state).
    - ``thr``: the slice length the tree's validity is computed for (0: not yet known, the
      first ``sample`` rebuilds the tree in O(N)).
    """

    traj: trj.TrajectoryState
    prio: jax.Array
    tree: TreeState
    max_priority: jax.Array
    cursor: jax.Array
    count: jax.Array
    thr: jax.Array


@dataclasses.dataclass(frozen=True)
class PrioritizedSliceSampler(Sampler):
    """Prioritized slices (TorchRL's ``PrioritizedSliceSampler``).

    Args:
      max_capacity, alpha, beta, eps, dtype, branching, stratified: as ``PrioritizedSampler``.
      num_slices / slice_len / traj_key (alias trajectory_key) / end_key / truncated_key /
        strict_length: as ``SliceSampler`` (same boundary rules and the same ``postprocess``:
        padding zeroed, ``truncated_key`` set at each slice's last real step).

    Distribution: each of the ``num_slices`` starts is drawn with probability
    ``p_s / sum_{valid s'} p_s'`` where ``p_s = (priority_s + eps) ** alpha`` is the
    priority of the start step and the sum runs over valid starts: slots from which
    ``slice_len`` steps stay inside one stored trajectory (``strict_length=False`` also
    allows the first stored step of a shorter trajectory, whose slice is then the whole
    trajectory padded at the end, ``info["mask"]`` False on the padding).
    As in TorchRL, a high-priority step that cannot start a slice (within ``slice_len - 1``
    of its trajectory's end) is only seen inside slices started earlier; aggregate
    priorities over slices yourself if needed.

    ``info["weight"]``: ``[num_slices, slice_len]``, each slice's importance weight
    ``(p_s / p_min) ** -beta`` on its real steps (0 on padding), with ``p_min`` the smallest
    positive ``p`` among valid starts, i.e. normalised by the largest weight a slice can get
    (TorchRL normalises by the minimum over all steps, valid starts or not, so its weights
    can exceed 1; ours are always in ``(0, 1]``).

    ``update_priority(index, priority)``: ``index`` as in ``info["index"]`` (``[num_slices,
    slice_len]`` arrays), ``priority`` the same shape (per step) or a scalar. Duplicates:
    the last occurrence wins; padding steps point at their slice's start, so pass the
    priorities of padding steps equal to the real ones or mask them out (an entry whose
    ``index`` is out of range, e.g. -1, is ignored). NaN/negative/infinite priorities are
    stored as 0 (see ``PrioritizedSampler``). New steps get the max priority.

    Cost: ``on_write`` O(lanes × (T + slice_len) log N) with ``slice_len`` given; with
    ``num_slices`` the slice length is only known at ``sample`` time, so each add
    recomputes every start (O(N)): prefer ``slice_len`` for large buffers. The first
    ``sample`` rebuilds the tree in O(N) when the length was not known before.
    """

    max_capacity: int
    alpha: float
    beta: float
    eps: float = 1e-8
    _: dataclasses.KW_ONLY
    num_slices: Optional[int] = None
    slice_len: Optional[int] = None
    traj_key: Any = None
    end_key: Any = None
    truncated_key: Any = ("next", "truncated")
    strict_length: bool = True
    trajectory_key: Any = None
    dtype: object = jnp.float32
    branching: int = BRANCHING
    stratified: bool = True
    pads = True

    def __post_init__(self):
        check_config(self)
        check_slice_config(self)

    @property
    def _base(self) -> SliceSampler:
        """The equivalent uniform ``SliceSampler``: its static checks, shapes and postprocess."""
        return SliceSampler(
            num_slices=self.num_slices, slice_len=self.slice_len, traj_key=self.traj_key, end_key=self.end_key,
            truncated_key=self.truncated_key, strict_length=self.strict_length, trajectory_key=self.trajectory_key,
        )

    def _tree(self, layout) -> SumTree:
        return SumTree(layout.size, self.branching, self.dtype)

    # ---------------------------------------------------------------- validity
    def _valid(self, layout, ts, cursor, count, lane, t, n):
        """Bool: slot ``t`` of flat lane ``lane`` starts a valid slice of ``n`` steps."""
        lane_idx = _ring.lane_index(lane, layout.lanes) if layout.lanes else ()
        pos = trj.slot_position(layout, ts, cursor, count, (*lane_idx, t))
        ok = pos.after >= n
        if not self.strict_length:
            ok = ok | (pos.before == 0)
        return pos.written & ok & (n > 0), pos

    def _rebuild(self, layout, s: PrioritizedSliceState, n) -> PrioritizedSliceState:
        cap = layout.capacity
        lane = jnp.repeat(jnp.arange(layout.n_lanes, dtype=jnp.int32), cap)
        t = jnp.tile(jnp.arange(cap, dtype=jnp.int32), layout.n_lanes)
        valid, _ = self._valid(layout, s.traj, s.cursor, s.count, lane, t, n)
        tree = self._tree(layout).from_leaves(s.tree, jnp.where(valid, s.prio, 0))
        return dataclasses.replace(s, tree=tree, thr=jnp.asarray(n, jnp.int32))

    def _ensure(self, layout, s: PrioritizedSliceState, n: int) -> PrioritizedSliceState:
        # A loop that runs at most once rather than a cond: the untaken identity branch of a
        # cond copies the O(N) state on every call, a loop carry is updated in place.
        return jax.lax.while_loop(lambda c: c.thr != n, lambda c: self._rebuild(layout, c, n), s)

    # ---------------------------------------------------------------- sampler interface
    def check(self, layout, batch_size: int) -> None:
        self._base.check(layout, batch_size)
        check_capacity(self, layout)

    def init(self, layout):
        spec = trj.key_spec(layout, self.traj_key, self.end_key, owner=type(self).__name__)
        z = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
        return PrioritizedSliceState(
            traj=trj.init(layout, spec),
            prio=jnp.zeros((layout.size,), self.dtype),
            tree=self._tree(layout).init(),
            max_priority=jnp.full((), -jnp.inf, self.dtype),
            cursor=z(),
            count=z(),
            thr=jnp.full((), self.slice_len or 0, jnp.int32),
        )

    def on_write(self, layout, s, write, data):
        spec = trj.key_spec(layout, self.traj_key, self.end_key, owner=type(self).__name__)
        ts, _ = trj.update(layout, s.traj, spec, write, data)
        cap, n_l = layout.capacity, layout.n_lanes
        pos = write.positions
        lanes = jnp.arange(n_l, dtype=jnp.int32)[:, None]
        flat_w = (lanes * cap + pos[None, :]).reshape(-1)
        default = self._tree(layout).leaf_value(
            jnp.where(jnp.isneginf(s.max_priority), 1.0, s.max_priority).astype(self.dtype), self.eps, self.alpha)
        prio = s.prio.at[flat_w].set(default, mode="drop", unique_indices=True)
        # Starts whose validity may have changed: the thr - 1 slots before the first written
        # one (their slices may now reach into new data or cross the head), the written ones,
        # and the new oldest slot (the first stored step of a trajectory shortened by the ring).
        thr = s.thr
        w = self.slice_len if self.slice_len is not None else cap
        m = min(w + pos.shape[0], cap)
        if m == cap:  # every start may have changed: an O(N) rebuild beats N tree updates
            s = dataclasses.replace(s, traj=ts, prio=prio, cursor=write.new_cursor, count=write.new_count)
            return self._rebuild(layout, s, thr)
        first = jnp.where(m < cap, pos[0] - jnp.maximum(thr - 1, 0), 0)
        t = (first + jnp.arange(m, dtype=jnp.int32)) % cap
        lane = jnp.broadcast_to(lanes, (n_l, m)).reshape(-1)
        t = jnp.broadcast_to(t[None, :], (n_l, m)).reshape(-1)
        valid, _ = self._valid(layout, ts, write.new_cursor, write.new_count, lane, t, thr)
        flat = lane * cap + t
        tree = self._tree(layout).update(s.tree, flat, jnp.where(valid, prio[flat], 0), unique=True)
        return PrioritizedSliceState(ts, prio, tree, s.max_priority, write.new_cursor, write.new_count, thr)

    def sample(self, layout, state, key, batch_size: int):
        n_slices, n = self._base.shape(batch_size)
        s = self._ensure(layout, state.sampler, n)
        tree = self._tree(layout)
        cap = layout.capacity
        ok = tree.total(s.tree) > 0
        flat, p = tree.sample(s.tree, key, n_slices, self.stratified, with_value=True)
        flat = jnp.where(ok, jnp.minimum(flat, layout.size - 1), 0)
        lane, t0 = flat // cap, flat % cap
        valid, pos = self._valid(layout, s.traj, state.cursor, state.count, lane, t0, n)
        ok = ok & valid  # (always true when ok; guards the all-zero case)
        length = jnp.where(ok, jnp.minimum(pos.after, n), 0)
        steps = jnp.arange(n, dtype=jnp.int32)
        mask = steps[None, :] < length[:, None]
        # Slices never cross the write head, so consecutive steps are consecutive physical
        # slots (mod capacity); padding points at the slice's first step (a real slot).
        t = (t0[:, None] + jnp.where(mask, steps[None, :], 0)) % cap
        t = jnp.where(ok[:, None], t, 0).astype(jnp.int32)
        if layout.lanes:
            lane_idx = tuple(jnp.broadcast_to(li[:, None], t.shape).astype(jnp.int32)
                             for li in _ring.lane_index(jnp.where(ok, lane, 0), layout.lanes))
        else:
            lane_idx = ()
        w = tree.weights(s.tree, p, self.beta)
        weight = jnp.where(mask, w[:, None], 0).astype(self.dtype)
        return s, (*lane_idx, t), {"weight": weight, "mask": mask}

    def postprocess(self, layout, batch, info):
        return self._base.postprocess(layout, batch, info)

    def can_sample(self, layout, state, batch_size: int):
        _, n = self._base.shape(batch_size)
        s = self._ensure(layout, state.sampler, n)
        return self._tree(layout).total(s.tree) > 0

    def update_priority(self, layout, s, index, priority):
        name = type(self).__name__
        shape = check_priority(name, index, priority)
        if len(index) != layout.ndim:
            raise ValueError(
                f"{name}.update_priority: index has {len(index)} arrays, expected {layout.ndim} "
                f"((*lane_idx, t) for ndim={layout.ndim} storage)"
            )
        cap = layout.capacity
        index = tuple(jnp.asarray(i).astype(jnp.int32).reshape(-1) for i in index)
        t = index[-1]
        ok = (t >= 0) & (t < s.count)
        for i, d in zip(index[:-1], layout.lanes):
            ok = ok & (i >= 0) & (i < d)
        flat = _ring.flat_index(index, layout.lanes, cap)
        flat = jnp.where(ok, flat, layout.size)
        pr = jnp.asarray(priority)
        raw = jnp.broadcast_to(sanitize(pr, self.dtype), shape).reshape(-1)
        good = ok & jnp.broadcast_to(jnp.isfinite(pr) & (pr >= 0), shape).reshape(-1)
        mp = jnp.maximum(s.max_priority, jnp.max(jnp.where(good, raw, -jnp.inf), initial=-jnp.inf))
        scratch, won = last_wins(s.tree.scratch, flat)
        flat = jnp.where(won, flat, layout.size)
        prio = s.prio.at[flat].set(self._tree(layout).leaf_value(raw, self.eps, self.alpha), mode="drop",
                                   unique_indices=True)
        lane = jnp.minimum(flat // cap, layout.n_lanes - 1)
        valid, _ = self._valid(layout, s.traj, s.cursor, s.count, lane, flat % cap, s.thr)
        tree = dataclasses.replace(s.tree, scratch=scratch)
        tree = self._tree(layout).update(tree, flat, jnp.where(valid, prio[jnp.minimum(flat, layout.size - 1)], 0),
                                         valid=won, unique=True)
        return dataclasses.replace(s, prio=prio, tree=tree, max_priority=mp)

