"""``PrioritizedSampler``: prioritized experience replay (Schaul et al., 2015) on a pure-JAX
sum/min tree held in the buffer state.

Semantics (TorchRL's ``PrioritizedSampler``):

- ``update_priority(state, info["index"], priority)`` stores ``(priority + eps) ** alpha``
  for each item; item ``i`` is then drawn with probability ``P(i) = p_i / sum_j p_j``.
- New items (every slot an ``add`` writes, in every lane) get ``(max_priority + eps) **
  alpha`` where ``max_priority`` is the largest raw priority ever passed to
  ``update_priority`` (1.0 before the first update).
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

from rlbuf import _fields
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.sumtree import SumTree, TreeState

#: Default tree branching factor: a good trade-off on CPU between the number of sequential
#: levels and the work per level (measured in ``rlbuf.bench.prioritized``).
BRANCHING = 8


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrioritizedState:
    """``tree``: sum/min tree over the ``n_lanes * capacity`` flat slots (leaf ``lane *
    capacity + t``, see ``rlbuf._ring.flat_index``) holding ``(p + eps) ** alpha``;
    ``max_priority``: largest raw priority passed to ``update_priority`` (``-inf`` before
    any)."""

    tree: TreeState
    max_priority: jax.Array


def check_capacity(sampler, layout) -> None:
    """Raise unless ``sampler.max_capacity`` covers the whole storage of ``layout``."""
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
    if pshape not in ((), shape):
        raise ValueError(
            f"{name}.update_priority: priority has shape {pshape}, expected {shape} (the index's shape"
            f"{shape_msg}) or a scalar"
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

    ``sample`` returns ``index`` ``(*lane_idx, t)`` of shape ``[batch_size]``,
    ``info["weight"]`` (``[batch_size]``, tree dtype) and ``info["mask"]`` (False only when
    nothing can be sampled: empty buffer or all priorities 0; the batch is then zeros).
    It never returns an unwritten slot or a zero-priority item while any item has a positive
    priority.

    ``update_priority(layout, sstate, index, priority)``: ``index`` as in ``info["index"]``
    (a tuple ``(*lane_idx, t)`` of int arrays of one shape ``S``), ``priority`` ``S`` or a
    scalar. Duplicate indices in one call: **the last occurrence wins**. Indices of slots that
    hold no data (or out of range) are ignored. NaN, negative or infinite priorities are stored
    as 0 (with ``eps = 0`` such an item is never sampled; otherwise it gets ``eps ** alpha``)
    and do not count towards ``max_priority``.
    """

    max_capacity: int
    alpha: float
    beta: float
    eps: float = 1e-8
    dtype: object = _fields.dtype_name(jnp.float32)
    branching: int = BRANCHING
    stratified: bool = True
    pads = True

    def __post_init__(self):
        check_config(self)

    def split(self, n_groups: int, *, ndim: int, batch_size: int):
        """Each group's tree covers its own storage: ``max_capacity / n_groups`` (rounded up)."""
        return dataclasses.replace(self, max_capacity=max(1, math.ceil(self.max_capacity / n_groups)))

    # ---------------------------------------------------------------- helpers
    def _tree(self, layout) -> SumTree:
        return SumTree(layout.size, self.branching, self.dtype)

    def _leaf(self, raw, layout):
        """Tree value ``(raw + eps) ** alpha`` of sanitised raw priorities, clamped to the
        tree's finite range (see ``SumTree.leaf_value``; 0 stays 0 when ``eps = 0``)."""
        return self._tree(layout).leaf_value(raw, self.eps, self.alpha)

    def _default(self, max_priority, layout):
        """Tree value of a new item: ``(max_priority + eps) ** alpha`` (1.0 before any update)."""
        mp = jnp.where(jnp.isneginf(max_priority), jnp.ones((), self.dtype), max_priority)
        return self._leaf(mp, layout)

    def _draw(self, tree: SumTree, t: TreeState, key, k: int):
        """``k`` flat slots drawn from the tree, their importance weights and whether anything
        could be drawn (``ok``: the total is positive; otherwise slot 0 and weight 0)."""
        flat, p = tree.sample(t, key, k, self.stratified, with_value=True)
        ok = tree.total(t) > 0
        flat = jnp.where(ok, jnp.minimum(flat, tree.n - 1), 0)
        return flat, jnp.where(ok, tree.weights(t, p, self.beta), 0), ok

    def _priorities(self, ring, index: tuple, priority):
        """Trace-time checks of an ``update_priority`` call, then per entry (flattened): the flat
        slot (``size`` where the slot holds no data or is out of range, so that scatters drop
        it), the raw priority (sanitised, see :func:`sanitize`) and whether it counts towards
        ``max_priority`` (finite, ``>= 0``, on a written slot)."""
        layout = ring.layout
        name = type(self).__name__
        shape = check_priority(name, index, priority)
        if len(index) != layout.ndim:
            raise ValueError(
                f"{name}.update_priority: index has {len(index)} arrays, expected {layout.ndim} "
                f"((*lane_idx, t) for ndim={layout.ndim} storage)"
            )
        index = tuple(jnp.asarray(i).astype(jnp.int32).reshape(-1) for i in index)
        ok = ring.written(index)
        flat = jnp.where(ok, ring.flat(index), layout.size)
        pr = jnp.asarray(priority)
        raw = jnp.broadcast_to(sanitize(pr, self.dtype), shape).reshape(-1)
        good = ok & jnp.broadcast_to(jnp.isfinite(pr) & (pr >= 0), shape).reshape(-1)
        return flat, raw, good

    def _max_priority(self, max_priority, raw, good):
        """``max_priority`` raised to the largest counted raw priority of an update."""
        return jnp.maximum(max_priority, jnp.max(jnp.where(good, raw, -jnp.inf), initial=-jnp.inf))

    # ---------------------------------------------------------------- sampler interface
    def check(self, layout, batch_size: int) -> None:
        check_capacity(self, layout)

    def init(self, layout):
        return PrioritizedState(tree=self._tree(layout).init(), max_priority=jnp.full((), -jnp.inf, self.dtype))

    def on_write(self, ring, sstate, write, data):
        flat, valid = ring.lane_slots(write.positions)
        value = jnp.broadcast_to(self._default(sstate.max_priority, ring.layout), flat.shape)
        tree = self._tree(ring.layout).update(sstate.tree, flat, value, valid=valid, unique=True)
        return dataclasses.replace(sstate, tree=tree)

    def sample(self, ring, sstate, key, batch_size: int):
        flat, weight, ok = self._draw(self._tree(ring.layout), sstate.tree, key, batch_size)
        info = {"weight": weight, "mask": jnp.broadcast_to(ok, (batch_size,))}
        return sstate, tuple(i.astype(jnp.int32) for i in ring.unflatten(flat)), info

    def can_sample(self, ring, sstate, batch_size: int):
        return (ring.count > 0) & (self._tree(ring.layout).total(sstate.tree) > 0)

    def update_priority(self, ring, sstate, index, priority):
        flat, raw, good = self._priorities(ring, index, priority)
        tree = self._tree(ring.layout).update(sstate.tree, flat, self._leaf(raw, ring.layout))
        return dataclasses.replace(sstate, tree=tree, max_priority=self._max_priority(sstate.max_priority, raw, good))
