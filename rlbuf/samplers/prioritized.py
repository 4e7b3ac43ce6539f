"""``PrioritizedSampler``: prioritized experience replay (Schaul et al., 2015) on a pure-JAX
sum/min tree held in the buffer state.

Semantics (TorchRL's ``PrioritizedSampler``):

- ``update_priority(state, info["index"], priority)`` stores ``(priority + eps) ** alpha``
  for each item; item ``i`` is then drawn with probability ``P(i) = p_i / sum_j p_j``.
- New items (every slot an ``add`` writes, in every lane) get ``(max_priority + eps) **
  alpha`` where ``max_priority`` is the largest raw priority ever passed to
  ``update_priority`` (1.0 before the first update); with ``max_priority_within_buffer=True``,
  the largest priority among the items stored (and not being overwritten) instead.
- ``alpha`` and ``beta`` live in the sampler state (the constructor's values are the initial
  ones): :func:`set_beta` / :func:`set_alpha` change them without recompiling (annealing
  ``beta`` to 1, TorchRL's parameter schedulers). A new ``alpha`` re-exponentiates the stored
  priorities, ``(p + eps) ** alpha_new``, as TorchRL's ``alpha`` setter does.
- A priority with extra dims per item (``[*S, *E]`` for an index ``[*S]``, e.g. ``[N, 1]`` or
  one per step of a stored trajectory) is reduced over them with ``reduction`` (``"max"``,
  ``"min"``, ``"mean"``, ``"median"``, ``"sum"``; TorchRL's, lower median).
- ``info["weight"] = (N * P(i)) ** -beta / max_j (N * P(j)) ** -beta = (p_i / p_min) ** -beta``
  with ``p_min`` the smallest positive stored priority: importance weights normalised by the
  largest weight in the buffer, so they lie in ``(0, 1]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _fields, _reduce, _ring
from rlbuf.samplers import capabilities
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.sumtree import SumTree, TreeState

#: Default tree branching factor: a good trade-off on CPU between the number of sequential
#: levels and the work per level (measured in ``rlbuf.bench.prioritized``).
BRANCHING = 8


def tree_of(tree: TreeState) -> SumTree:
    """The static ``SumTree`` of a tree state, read from its arrays' shapes (one tree, no
    leading axes)."""
    return SumTree(tree.scratch.shape[-1], tree.sums[1].shape[-1], tree.sums[0].dtype.name)


def power(v, r, st: SumTree):
    """``v ** r`` for tree values ``v`` (zeros stay 0), clamped to the tree's finite range as every
    leaf is (``SumTree.leaf_value``)."""
    p = jnp.clip(jnp.power(jnp.where(v > 0, v, 1), r), np.finfo(v.dtype).tiny, st.max_leaf)
    return jnp.where(v > 0, p, 0).astype(v.dtype)


class ExponentState(capabilities.Exponents):
    """What the prioritized states share: ``tree`` (a sum tree of ``(p + eps) ** alpha``),
    ``alpha`` and ``beta``; ``with_exponents`` sets them (``set_alpha`` / ``set_beta``).
    Subclasses holding more per-slot values re-exponentiate them in :meth:`reexponent`."""

    def reexponent(self, ratio):
        """The state with every stored value ``v`` replaced by ``v ** ratio`` and the tree rebuilt
        in O(n); leading (shard / worker) axes are vmapped."""
        st = tree_of(self.tree)

        def one(t, r):
            return st.rebuild(TreeState((*t.sums[:-1], power(t.sums[-1], r, st)), t.mins, t.scratch))

        for _ in range(self.tree.sums[0].ndim - 1):
            one = jax.vmap(one)
        return dataclasses.replace(self, tree=one(self.tree, ratio))

    def with_exponents(self, alpha=None, beta=None):
        x = self
        if beta is not None:
            x = dataclasses.replace(x, beta=jnp.broadcast_to(jnp.asarray(beta, x.beta.dtype), x.beta.shape))
        if alpha is not None:
            new = jnp.broadcast_to(jnp.asarray(alpha, x.alpha.dtype), x.alpha.shape)
            # With alpha 0 every stored value is 1 and the priorities cannot be recovered (TorchRL
            # keeps them too): they stay uniform until their next update.
            ratio = jnp.where(x.alpha > 0, new / jnp.where(x.alpha > 0, x.alpha, 1), 1).astype(new.dtype)
            x = dataclasses.replace(x.reexponent(ratio), alpha=new)
        return x


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrioritizedState(ExponentState):
    """``tree``: sum/min tree over the ``n_lanes * capacity`` flat slots (leaf ``lane *
    capacity + t``, see ``rlbuf._ring.flat_index``) holding ``(p + eps) ** alpha``;
    ``max_priority``: largest raw priority passed to ``update_priority`` (``-inf`` before
    any); ``alpha`` / ``beta``: the current exponents (scalars of the tree dtype; see
    :func:`set_alpha` / :func:`set_beta`)."""

    tree: TreeState
    max_priority: jax.Array
    alpha: jax.Array
    beta: jax.Array


def check_capacity(sampler, layout) -> None:
    """Raise unless ``sampler.max_capacity`` covers the whole storage of ``layout`` and its sum
    tree can address it (int32 flat positions: fewer than ``2**31`` transitions)."""
    _ring.check_flat(layout.lanes, layout.capacity, type(sampler).__name__)
    if layout.size > sampler.max_capacity:
        raise ValueError(
            f"{type(sampler).__name__}: max_capacity={sampler.max_capacity} is smaller than the storage "
            f"({layout.size} transitions = {layout.n_lanes} lanes x {layout.capacity} steps); use "
            f"max_capacity >= {layout.size}"
        )


def check_config(sampler) -> None:
    """Validate the shared prioritized fields of ``sampler`` (``max_capacity``, ``alpha``, ``beta``,
    ``eps``, ``dtype``). Errors name the sampler's class."""
    name = type(sampler).__name__
    cap, alpha, beta, eps = sampler.max_capacity, sampler.alpha, sampler.beta, sampler.eps
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
        raise ValueError(f"{name}: max_capacity must be a positive int, got {cap!r}")
    for k, v in (("alpha", alpha), ("beta", beta), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"{name}: {k} must be a finite number, got {v!r}")
    if alpha < 0:
        raise ValueError(f"{name}: alpha must be >= 0 (0 = uniform, 1 = fully prioritized), got {alpha}")
    if not 0 <= beta <= 1:
        raise ValueError(f"{name}: beta must be in [0, 1] (0 = no correction, 1 = full), got {beta}")
    if eps < 0:
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")
    if not np.issubdtype(np.dtype(sampler.dtype), np.floating):
        raise TypeError(f"{name}: dtype must be a float dtype, got {sampler.dtype!r}")


def sanitize(priority, dtype):
    """Raw priorities as ``dtype``, with NaN, negative and infinite values replaced by 0.

    A 0 priority (with ``eps = 0``) is never sampled; jit cannot raise on values, so invalid
    priorities are neutralised this way rather than poisoning the tree's sums."""
    p = jnp.asarray(priority).astype(dtype)
    return jnp.where(jnp.isfinite(p) & (p >= 0), p, jnp.zeros((), dtype))


def check_priority(name, index: tuple, priority, shape_msg: str = "") -> tuple:
    """Trace-time checks of an ``update_priority`` call; returns the index shape."""
    shapes = {tuple(np.shape(i)) for i in index}
    if len(shapes) != 1:
        raise ValueError(f"{name}.update_priority: the index arrays have different shapes {sorted(shapes)}")
    for i in index:
        if not np.issubdtype(np.asarray(i).dtype if not hasattr(i, "dtype") else i.dtype, np.integer):
            raise TypeError(f"{name}.update_priority: index must be integer, got dtype {i.dtype}")
    (shape,) = shapes
    pdt = jnp.asarray(priority).dtype if not hasattr(priority, "dtype") else priority.dtype
    if not (np.issubdtype(pdt, np.floating) or np.issubdtype(pdt, np.integer)):
        raise TypeError(f"{name}.update_priority: priority must be a real number array, got dtype {pdt}")
    pshape = tuple(np.shape(priority))
    if pshape != () and (pshape[: len(shape)] != shape or 0 in pshape[len(shape):]):
        raise ValueError(
            f"{name}.update_priority: priority has shape {pshape}, expected {shape} (the index's shape"
            f"{shape_msg}), that shape followed by extra dims (reduced with ``reduction``) or a scalar"
        )
    return shape


@dataclasses.dataclass(frozen=True)
class PrioritizedSampler(Sampler):
    """Samples items with probability proportional to ``(priority + eps) ** alpha``.

    Args:
      max_capacity: upper bound on the storage size (``n_lanes * capacity`` transitions);
        ``ReplayBuffer.init`` raises if the storage is larger. The tree is sized to the
        actual storage.
      alpha: priority exponent, ``>= 0`` (0: uniform).
      beta: importance-weight exponent in ``[0, 1]``.
      eps: added to priorities before the exponent (``>= 0``).
      dtype: float dtype of the tree (``jnp.float32`` default).
      branching: children per tree node (speed knob only).
      stratified: draw one item in each of ``batch_size`` equal slices of the total priority
        mass (lower variance than i.i.d. draws; each item's expected count is the same). The
        batch then comes out ordered by storage slot.
      reduction: how a priority with extra dims per item is reduced (``"max"`` default, as
        TorchRL; ``"min"``, ``"mean"``, ``"median"``, ``"sum"``).
      max_priority_within_buffer: new items get the largest priority currently stored
        (TorchRL's option; costs O(capacity) per ``add``) instead of the largest ever given.

    ``sample`` returns ``index`` ``(*lane_idx, t)`` of shape ``[batch_size]``,
    ``info["weight"]`` (``[batch_size]``, tree dtype) and ``info["mask"]`` (False only when
    nothing can be sampled: empty buffer or all priorities 0; the batch is then zeros).
    It never returns an unwritten slot or a zero-priority item while any item has a positive
    priority.

    ``update_priority(layout, sstate, index, priority)``: ``index`` as in ``info["index"]``
    (a tuple ``(*lane_idx, t)`` of int arrays of one shape ``S``), ``priority`` ``S`` (extra
    trailing dims are reduced, see ``reduction``) or a scalar. Duplicate indices in one call:
    **the last occurrence wins**. Indices of slots that hold no data (or out of range) are
    ignored. NaN, negative or infinite priorities are stored
    as 0 (with ``eps = 0`` such an item is never sampled; otherwise it gets ``eps ** alpha``)
    and do not count towards ``max_priority``.
    """

    max_capacity: int
    alpha: float
    beta: float
    eps: float = 1e-8
    dtype: str = _fields.dtype_name(jnp.float32)
    branching: int = BRANCHING
    stratified: bool = True
    reduction: str = "max"
    max_priority_within_buffer: bool = False
    pads = True

    def __post_init__(self):
        check_config(self)

    def split(self, n_groups: int, *, ndim: int, batch_size: int):
        """Each group's tree covers its own storage: ``max_capacity / n_groups`` (rounded up)."""
        return dataclasses.replace(self, max_capacity=max(1, math.ceil(self.max_capacity / n_groups)))

    # ---------------------------------------------------------------- helpers
    def _tree(self, layout) -> SumTree:
        return SumTree(layout.size, self.branching, self.dtype)

    def _leaf(self, raw, alpha, layout):
        """Tree value ``(raw + eps) ** alpha`` of sanitised raw priorities, clamped to the
        tree's finite range (see ``SumTree.leaf_value``; 0 stays 0 when ``eps = 0``)."""
        return self._tree(layout).leaf_value(raw, self.eps, alpha)

    def _default(self, s, stored, overwritten, layout):
        """Tree value of the new items: ``(max_priority + eps) ** alpha`` (1.0 before any
        update), or with ``max_priority_within_buffer`` the largest of the per-slot tree values
        ``stored`` (``[size]``) outside the slots ``overwritten`` (flat, ``size`` = none)."""
        mp = jnp.where(jnp.isneginf(s.max_priority), jnp.ones((), self.dtype), s.max_priority)
        if not self.max_priority_within_buffer:
            return self._leaf(mp, s.alpha, layout)
        # (p + eps) ** alpha is increasing in p, so the largest stored value is the value of
        # the largest stored priority
        m = jnp.max(stored.at[overwritten].set(0, mode="drop"))
        return jnp.where(m > 0, m, self._leaf(jnp.ones((), self.dtype), s.alpha, layout))

    def _draw(self, tree: SumTree, s, key, k: int):
        """``k`` flat slots drawn from the tree of state ``s``, their importance weights and whether
        anything could be drawn (``ok``: the total is positive; otherwise slot 0 and weight 0)."""
        t = s.tree
        flat, p = tree.sample(t, key, k, self.stratified, with_value=True)
        ok = tree.total(t) > 0
        flat = jnp.where(ok, jnp.minimum(flat, tree.n - 1), 0)
        return flat, jnp.where(ok, tree.weights(t, p, s.beta), 0), ok

    def _priorities(self, ring, index: tuple, priority):
        """Trace-time checks of an ``update_priority`` call, then per entry (flattened): the flat
        slot (``size`` where the slot holds no data or is out of range, so that scatters drop
        it), the raw priority (sanitised, see :func:`sanitize`) and whether it counts towards
        ``max_priority`` (finite, ``>= 0``, on a written slot)."""
        layout = ring.layout
        name = type(self).__name__
        shape = check_priority(name, index, priority)
        _reduce.check(self.reduction, name)
        if len(index) != layout.ndim:
            raise ValueError(
                f"{name}.update_priority: index has {len(index)} arrays, expected {layout.ndim} "
                f"((*lane_idx, t) for ndim={layout.ndim} storage)"
            )
        index = tuple(jnp.asarray(i).astype(jnp.int32).reshape(-1) for i in index)
        ok = ring.written(index)
        flat = jnp.where(ok, ring.flat(index), layout.size)
        pr = jnp.asarray(priority)
        if pr.ndim:  # TorchRL reduces a priority with extra dims per item (e.g. [N, 1])
            pr = _reduce.reduce_trailing(pr, len(shape), self.reduction)
        raw = jnp.broadcast_to(sanitize(pr, self.dtype), shape).reshape(-1)
        good = ok & jnp.broadcast_to(jnp.isfinite(pr) & (pr >= 0), shape).reshape(-1)
        return flat, raw, good

    def _max_priority(self, max_priority, raw, good):
        """``max_priority`` raised to the largest counted raw priority of an update."""
        return jnp.maximum(max_priority, jnp.max(jnp.where(good, raw, -jnp.inf), initial=-jnp.inf))

    # ---------------------------------------------------------------- sampler interface
    def check(self, layout, batch_size: int) -> None:
        check_capacity(self, layout)

    def _exponents(self):
        """Initial ``alpha`` / ``beta`` state entries (distinct buffers, for donation)."""
        return jnp.full((), self.alpha, self.dtype), jnp.full((), self.beta, self.dtype)

    def init(self, layout):
        alpha, beta = self._exponents()
        return PrioritizedState(tree=self._tree(layout).init(), max_priority=jnp.full((), -jnp.inf, self.dtype),
                                alpha=alpha, beta=beta)

    def on_write(self, ring, sstate, write, data):
        tree = self._tree(ring.layout)
        flat, valid = ring.lane_slots(write.positions)
        new = self._default(sstate, tree.leaves(sstate.tree), jnp.where(valid, flat, ring.layout.size), ring.layout)
        value = jnp.broadcast_to(new, flat.shape)
        return dataclasses.replace(sstate, tree=tree.update(sstate.tree, flat, value, valid=valid, unique=True))

    def sample(self, ring, sstate, key, batch_size: int):
        flat, weight, ok = self._draw(self._tree(ring.layout), sstate, key, batch_size)
        info = {"weight": weight, "mask": jnp.broadcast_to(ok, (batch_size,))}
        return sstate, tuple(i.astype(jnp.int32) for i in ring.unflatten(flat)), info

    def can_sample(self, ring, sstate, batch_size: int):
        return (ring.count > 0) & (self._tree(ring.layout).total(sstate.tree) > 0)

    def exclude(self, ring, sstate, index, bad):
        """Items the storage cannot return get priority 0: out of the tree's mass and of
        ``p_min`` (their slot's next write gives them the new-item priority again)."""
        flat = ring.flat(tuple(i.reshape(-1) for i in index))
        tree = self._tree(ring.layout).update(sstate.tree, flat, jnp.zeros(flat.shape, self.dtype),
                                              valid=bad.reshape(-1))
        return dataclasses.replace(sstate, tree=tree)

    def update_priority(self, ring, sstate, index, priority):
        flat, raw, good = self._priorities(ring, index, priority)
        tree = self._tree(ring.layout).update(sstate.tree, flat, self._leaf(raw, sstate.alpha, ring.layout))
        return dataclasses.replace(sstate, tree=tree, max_priority=self._max_priority(sstate.max_priority, raw, good))


# -------------------------------------------------------------------- alpha / beta setters
def _check_value(name, v, lo, hi):
    if isinstance(v, jax.core.Tracer):
        return  # a traced value cannot be checked; it is used as given
    a = np.asarray(v)
    if a.ndim or not np.isfinite(a) or not lo <= float(a) <= hi:
        raise ValueError(f"set_{name}: {name} must be a finite scalar in [{lo}, {hi}], got {v!r}")


def set_beta(state, beta):
    """``state`` (a buffer state, or any pytree of them: sharded, per-worker, ensemble) with the
    importance-weight exponent of every prioritized sampler in it set to ``beta`` (in [0, 1]).
    Pure and jittable; ``beta`` may be a traced scalar, so annealing never recompiles. The
    states are found by their type (``rlbuf.samplers.capabilities.Exponents``)."""
    _check_value("beta", beta, 0.0, 1.0)
    return capabilities.update_all(state, capabilities.Exponents, lambda x: x.with_exponents(beta=beta),
                                   "set_alpha/set_beta", "prioritized")


def set_alpha(state, alpha):
    """``state`` with the priority exponent of every prioritized sampler in it set to ``alpha``
    (``>= 0``); the stored priorities are re-exponentiated to ``(p + eps) ** alpha`` (O(capacity),
    as TorchRL's ``alpha`` setter; from ``alpha = 0`` they cannot be recovered and stay uniform
    until updated). Pure and jittable, no recompilation."""
    _check_value("alpha", alpha, 0.0, math.inf)
    return capabilities.update_all(state, capabilities.Exponents, lambda x: x.with_exponents(alpha=alpha),
                                   "set_alpha/set_beta", "prioritized")
