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

One home per mechanism: the priorities (leaf values, new-item priority, index checks, the
max-priority update, importance weights, the tree) are ``PrioritizedSampler``'s, the slice
fields, checks, index builder and ``postprocess`` are ``_SliceBase``'s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlbuf import _ring, _xla
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers._slice_base import _SliceBase, check_slice_config
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.prioritized import ExponentState, PrioritizedSampler, check_capacity, check_config, power, tree_of
from rlbuf.samplers.sumtree import TreeState, last_wins


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrioritizedSliceState(ExponentState):
    """- ``traj``: trajectory-boundary bookkeeping (shared with the slice samplers).
    - ``prio``: ``[n_lanes * capacity]`` per-step tree value ``(p + eps) ** alpha``.
    - ``tree``: sum/min tree of ``prio * valid_start(thr)``.
    - ``max_priority``: largest raw priority passed to ``update_priority`` (``-inf`` before).
    - ``thr``: the slice length the tree's validity is computed for (0: not yet known, the
      first ``sample`` rebuilds the tree in O(N)).
    - ``alpha`` / ``beta``: the current exponents (``rlbuf.samplers.prioritized.set_alpha`` /
      ``set_beta``).
    """

    traj: trj.TrajectoryState
    prio: jax.Array
    tree: TreeState
    max_priority: jax.Array
    thr: jax.Array
    alpha: jax.Array
    beta: jax.Array

    def reexponent(self, ratio):
        """The tree (``ExponentState.reexponent``) and the per-step values ``prio`` re-exponentiated."""
        per_entry = jnp.asarray(ratio)[..., None]  # [*lead, 1]: one ratio per shard / worker entry
        return dataclasses.replace(ExponentState.reexponent(self, ratio),
                                   prio=power(self.prio, per_entry, tree_of(self.tree)))


@dataclasses.dataclass(frozen=True)
class PrioritizedSliceSampler(PrioritizedSampler, _SliceBase):
    """Prioritized slices (TorchRL's ``PrioritizedSliceSampler``).

    Args:
      max_capacity, alpha, beta, eps, dtype, branching, stratified: as ``PrioritizedSampler``.
      num_slices / slice_len / traj_key (alias trajectory_key) / end_key / truncated_key /
        strict_length (keyword-only): as ``SliceSampler`` (same boundary rules and the same
        ``postprocess``: padding zeroed, ``truncated_key`` set at each slice's last real step).

    Distribution: each of the ``num_slices`` starts is drawn with probability
    ``p_s / sum_{valid s'} p_s'`` where ``p_s = (priority_s + eps) ** alpha`` is the
    priority of the start step and the sum runs over valid starts: slots from which
    ``slice_len`` steps stay inside one stored trajectory (``strict_length=False`` also
    allows the first stored step of a shorter trajectory, whose slice is then the whole
    trajectory padded at the end, ``info["mask"]`` False on the padding).
    ``span=(False, right)`` (TorchRL's right span): a start may also lie within ``slice_len - 1``
    steps of its trajectory's end (``right=True``; an int ``k``: within ``k`` steps of where a
    whole slice would no longer fit), the slice then holds the steps to the end and padding
    after them, as ``SliceSampler(span=...)``. Left spanning raises (TorchRL turns it off).
    As in TorchRL, a high-priority step that cannot start a slice (within ``slice_len - 1``
    of its trajectory's end) is only seen inside slices started earlier; aggregate
    priorities over slices yourself if needed.

    ``info["weight"]``: ``[num_slices, slice_len]``, each slice's importance weight
    ``(p_s / p_min) ** -beta`` on its real steps (0 on padding), with ``p_min`` the smallest
    positive ``p`` among valid starts, i.e. normalised by the largest weight a slice can get,
    so the weights lie in ``(0, 1]`` and reach 1. (TorchRL takes ``p_min`` over all stored
    steps, valid starts or not: when a step that cannot start a slice has the smallest
    priority, its weights are all smaller than ours by one common factor and stay below 1.)

    ``burn_in=b``: as ``SliceSampler`` (the start is drawn as above; the ``b`` steps before it
    are context). Priorities and ``info["weight"]`` refer to the learning steps: weights are 0
    on burn-in steps. ``update_priority`` with the full ``[num_slices, b + slice_len]``
    ``info["index"]`` ignores the first ``b`` columns (burn-in steps are other slices'
    learning steps: the priorities a masked loss gives them, usually 0, must not overwrite
    theirs); the learning steps' index ``[i[:, b:] for i in index]`` works too. Or pass
    ``info`` itself, ``rb.update_priority(state, info, priority)``: only steps where
    ``info["learning_mask"]`` is True are updated (padding ignored as well).

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

    def __post_init__(self):
        check_config(self)
        check_slice_config(self)
        if self.span[0]:  # True or an int > 0
            # TorchRL warns and turns left spanning off: a start before the trajectory has no step,
            # hence no priority. Refused here rather than changed silently.
            raise ValueError(
                f"PrioritizedSliceSampler: span={self.span} spans left, which is not supported (a slice start "
                "is a stored step drawn by its priority; TorchRL turns it off too); use span=(False, right)"
            )

    def split(self, n_groups: int, *, ndim: int, batch_size: int):
        s = _SliceBase.split(self, n_groups, ndim=ndim, batch_size=batch_size)
        return PrioritizedSampler.split(s, n_groups, ndim=ndim, batch_size=batch_size)

    # ---------------------------------------------------------------- validity
    def _valid(self, ring, ts, lane, t, n):
        """Bool: slot ``t`` of flat lane ``lane`` starts a valid slice of ``n`` steps."""
        lane_idx = _ring.lane_index(lane, ring.lanes) if ring.lanes else ()
        pos = trj.slot_position(ring, ts, (*lane_idx, t))
        right = self.span[1]  # span right: the slice may run past the end (``_start_range``'s rule)
        ok = pos.after >= (1 if right is True else n - int(right))
        if not self.strict_length:
            ok = ok | (pos.before == 0)
        return pos.written & ok & (n > 0), pos

    def _rebuild(self, ring, s: PrioritizedSliceState, n) -> PrioritizedSliceState:
        cap = ring.capacity
        lane = jnp.repeat(jnp.arange(ring.n_lanes, dtype=jnp.int32), cap)
        t = jnp.tile(jnp.arange(cap, dtype=jnp.int32), ring.n_lanes)
        valid, _ = self._valid(ring, s.traj, lane, t, n)
        tree = self._tree(ring.layout).from_leaves(s.tree, jnp.where(valid, s.prio, 0))
        return dataclasses.replace(s, tree=tree, thr=jnp.asarray(n, jnp.int32))

    def _ensure(self, ring, s: PrioritizedSliceState, n: int) -> PrioritizedSliceState:
        return _xla.run_at_most_once(lambda c: c.thr != n, lambda c: self._rebuild(ring, c, n), s)

    # ---------------------------------------------------------------- sampler interface
    def check(self, layout, batch_size: int) -> None:
        _SliceBase.check(self, layout, batch_size)
        check_capacity(self, layout)

    def init(self, layout):
        alpha, beta = self._exponents()
        return PrioritizedSliceState(
            traj=trj.init(layout, self._spec(layout), per_slot=True),
            prio=jnp.zeros((layout.size,), self.dtype),
            tree=self._tree(layout).init(),
            max_priority=jnp.full((), -jnp.inf, self.dtype),
            thr=jnp.full((), self.slice_len or 0, jnp.int32),
            alpha=alpha,
            beta=beta,
        )

    def on_write(self, ring, s, write, data):
        layout = ring.layout
        ts, _ = trj.update(ring, s.traj, self._spec(layout), write, data)
        cap, n_l = layout.capacity, layout.n_lanes
        pos = write.positions
        flat_w, written = ring.lane_slots(pos)
        flat_w = jnp.where(written, flat_w, layout.size)
        prio = s.prio.at[flat_w].set(self._default(s, s.prio, flat_w, layout), mode="drop", unique_indices=True)
        s = dataclasses.replace(s, traj=ts, prio=prio)
        # Starts whose validity may have changed: the thr - 1 slots before the first written
        # one (their slices may now reach into new data or cross the head), the written ones,
        # and the new oldest slot (the first stored step of a trajectory shortened by the ring).
        thr = s.thr
        w = self.slice_len if self.slice_len is not None else cap
        m = min(w + pos.shape[0], cap)
        if m == cap:  # every start may have changed: an O(N) rebuild beats N tree updates
            return self._rebuild(ring, s, thr)
        first = pos[0] - jnp.maximum(thr - 1, 0)
        t = (first + jnp.arange(m, dtype=jnp.int32)) % cap
        lane = jnp.repeat(jnp.arange(n_l, dtype=jnp.int32), m)
        t = jnp.tile(t, n_l)
        valid, _ = self._valid(ring, ts, lane, t, thr)
        flat = lane * cap + t
        tree = self._tree(layout).update(s.tree, flat, jnp.where(valid, prio[flat], 0), unique=True)
        return dataclasses.replace(s, tree=tree)

    def _learning_part(self, s, index: tuple) -> tuple:
        """``index`` with the burn-in columns of a full ``[S, b + n]`` sequence index out of
        range (-1: ignored by the update). ``n`` is the sampled slice length (``s.thr``, dynamic
        when only ``num_slices`` is given), so a learning-steps index ``[S, n]`` is left as is."""
        b = self.burn_in
        if not b or not index or jnp.ndim(index[-1]) < 2:
            return index
        t = jnp.asarray(index[-1])
        width = t.shape[-1]
        col = jax.lax.broadcasted_iota(jnp.int32, t.shape, t.ndim - 1)
        burn = (width == b + s.thr) & (col < b)
        return (*index[:-1], jnp.where(burn, -1, t))

    # Its tree holds slice starts, not items: rejected slices are only redrawn (Sampler.draw).
    exclude = Sampler.exclude

    def sample(self, ring, s, key, batch_size: int):
        n_slices, n = self.shape(batch_size)
        s = self._ensure(ring, s, n)
        flat, w, ok = self._draw(self._tree(ring.layout), s, key, n_slices)
        lane, t0 = flat // ring.capacity, flat % ring.capacity
        valid, pos = self._valid(ring, s.traj, lane, t0, n)
        ok = ok & valid  # (always true when ok; guards the all-zero case)
        real = jnp.where(ok, jnp.minimum(pos.after, n), 0)
        index, info = self._sequence(ring, jnp.where(ok, lane, 0), ring.logical(t0), pos.before, ok, real, n)
        # Weights on the learning steps (the ones a loss uses; burn-in steps only warm up a carry).
        weight = jnp.where(info["learning_mask"], w[:, None], 0).astype(self.dtype)
        return s, index, {**info, "weight": weight}

    def can_sample(self, ring, s, batch_size: int):
        _, n = self.shape(batch_size)
        s = self._ensure(ring, s, n)
        return self._tree(ring.layout).total(s.tree) > 0

    def update_priority(self, ring, s, index, priority):
        layout = ring.layout
        index = self._learning_part(s, index)
        flat, raw, good = self._priorities(ring, index, priority)
        # Duplicates resolved once here, for the per-step priorities and the tree alike.
        scratch, won = last_wins(s.tree.scratch, flat)
        flat = jnp.where(won, flat, layout.size)
        prio = s.prio.at[flat].set(self._leaf(raw, s.alpha, layout), mode="drop", unique_indices=True)
        lane = jnp.minimum(flat // layout.capacity, layout.n_lanes - 1)
        valid, _ = self._valid(ring, s.traj, lane, flat % layout.capacity, s.thr)
        value = jnp.where(valid, prio[jnp.minimum(flat, layout.size - 1)], 0)
        tree = self._tree(layout).update(dataclasses.replace(s.tree, scratch=scratch), flat, value,
                                         valid=won, unique=True)
        return dataclasses.replace(s, prio=prio, tree=tree,
                                   max_priority=self._max_priority(s.max_priority, raw, good))
