"""A pure-JAX sum tree with a companion min tree, for prioritized sampling.

Layout: one flat array per level (a ``B``-ary tree, ``B = branching``), top-down: level 0 is
the root ``[1]``, the last level holds the leaves. Every level except the root has a size
that is a multiple of ``B``, so ``level.reshape(-1, B)[node]`` is the row of ``node``'s
children in the level below. Leaves beyond ``n`` (padding) hold 0. The min tree (smallest
*positive* leaf below each node, ``+inf`` if none) has the same internal levels but no leaf
level of its own: its bottom level is reduced straight from the sum tree's leaves (zeros
read as ``+inf``), which saves a scatter and a gather over an ``[n]`` array per update.

Why this layout: on CPU the cost of a batched update or search is dominated by the number of
sequential levels (one gather and one scatter each), not by the ``B`` values read per node, so
a wide tree (``B = 8`` or ``16``) beats a binary heap (see ``rlbuf.bench.prioritized``);
for the same reason the small top levels (``<= dense_levels`` nodes) are recomputed whole by
one fused reduction instead of a gather/scatter pair each.

Why parents are *recomputed* from their children rather than adjusted by deltas: a
delta-updated float32 root drifts from the sum of its leaves after millions of updates, and
the search then lands on zero-priority leaves (flashbax issue #52). Here every touched parent
is rewritten as the (fixed-order) sum/min of its ``B`` children, level by level, so every
internal node is always exactly the tree reduction of the current leaves, however many
updates ran before. A parent touched by several updated leaves is written several times with
the *same* value (all computed from the already-updated level below), so XLA's unordered
scatter of duplicate parents is still deterministic. Only the leaf level needs a duplicate
rule: **the last occurrence of an index in an update wins** (stable sort + keep the last of
each run of equal indices).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _fields, _xla


def last_wins(scratch, idx):
    """Deterministic "last occurrence wins" among duplicate indices of ``idx`` (int32 ``[K]``).

    ``scratch``: int32 ``[n]`` working memory (any content). Returns ``(scratch, won)`` with
    ``won[k]`` True iff ``idx[k]`` is in ``[0, n)`` and no later entry has the same index.
    Why not a sort: a scatter-max of each entry's position is order independent (unlike a
    scatter-set of duplicates) and costs a few small scatters, while an argsort is several
    times slower on CPU. The scratch is reset at ``idx`` first, so stale content never matters.
    """
    ar = jnp.arange(idx.shape[0], dtype=jnp.int32)
    scratch = scratch.at[idx].set(-1, mode="drop").at[idx].max(ar, mode="drop")
    return scratch, jnp.take(scratch, idx, mode="fill", fill_value=-1) == ar


def _positive(x):
    """Min-tree view of sum-tree leaves: zero (never sampled) leaves read as ``+inf``."""
    return jnp.where(x > 0, x, jnp.inf).astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeState:
    """``sums`` / ``mins``: tuples of per-level arrays, top-down (``sums[0]`` is ``[1]``, the
    root; ``sums[-1]`` the leaves, padded to a multiple of the branching factor). ``mins``
    has no leaf level (``len(mins) == len(sums) - 1``): ``mins[-1]`` is reduced from ``sums[-1]``.
    ``scratch``: int32 ``[n]`` working memory for duplicate resolution (its content carries
    no meaning between updates)."""

    sums: tuple
    mins: tuple
    scratch: jax.Array


@dataclasses.dataclass(frozen=True)
class SumTree:
    """Static description of a sum/min tree over ``n`` leaves (hashable).

    Args:
      n: number of leaves (``>= 1``).
      branching: children per node (``>= 2``).
      dtype: float dtype name of the tree's values (``"float32"`` or ``"float64"``).
      dense_levels: levels of at most this many nodes are recomputed whole on ``update``
        (every node still equals the reduction of its children; speed knob only).
    """

    n: int
    branching: int = 8
    dtype: str = _fields.dtype_name("float32")
    dense_levels: int = 512

    def __post_init__(self):
        if not isinstance(self.n, (int, np.integer)) or self.n < 1:
            raise ValueError(f"SumTree: n must be a positive int, got {self.n!r}")
        if not isinstance(self.branching, (int, np.integer)) or self.branching < 2:
            raise ValueError(f"SumTree: branching must be an int >= 2, got {self.branching!r}")
        if not np.issubdtype(np.dtype(self.dtype), np.floating):
            raise TypeError(f"SumTree: dtype must be a float dtype, got {self.dtype!r}")

    @property
    def sizes(self) -> tuple:
        """Level sizes, top-down: ``(1, B, ..., leaves)``."""
        b = self.branching
        up = lambda m: -(-m // b) * b  # noqa: E731
        sizes = [up(self.n)]
        while sizes[-1] > b:
            sizes.append(up(sizes[-1] // b))
        sizes.append(1)
        return tuple(reversed(sizes))

    @property
    def depth(self) -> int:
        """Number of levels below the root."""
        return len(self.sizes) - 1

    def init(self) -> TreeState:
        """All leaves 0 (sums 0, mins ``+inf``): an empty tree."""
        dt = jnp.dtype(self.dtype)
        sums = tuple(jnp.zeros((s,), dt) for s in self.sizes)
        mins = tuple(jnp.full((s,), jnp.inf, dt) for s in self.sizes[:-1])
        return TreeState(sums, mins, jnp.zeros((self.n,), jnp.int32))

    # ---------------------------------------------------------------- priority range
    @property
    def max_leaf(self) -> float:
        """Largest value a leaf may hold: ``finfo(dtype).max / (2 * leaves)`` (leaves padded to
        a multiple of the branching factor), so that the root -- the sum of every leaf even when
        all are at the bound -- and every partial sum of the search stay finite; the factor 2
        absorbs the rounding of the level-by-level sums. float32 with 10^6 slots: ~1.7e32."""
        return float(np.finfo(self.dtype).max) / (2 * self.sizes[-1])

    def leaf_value(self, raw, eps: float, alpha: float):
        """The leaf ``(raw + eps) ** alpha`` of (sanitised, finite, ``>= 0``) raw priorities,
        clamped to ``[finfo(dtype).tiny, max_leaf]`` -- or 0 where ``raw + eps`` is 0 (never
        sampled; also for ``alpha = 0``).

        Why clamp: ``alpha = 2`` and ``raw = 1e30`` would make the float32 root inf (every draw
        then lands on the last positive slot, and later default priorities become inf). Why
        the lower bound: XLA flushes subnormals to zero, so a tiny positive priority (or one
        whose power underflows) would silently never be sampled; its positivity is read from
        the bits (``x > 0`` is False for a subnormal ``x`` on CPU) and it is floored at the
        smallest normal number instead. Priorities above the bound all tie at it.
        """
        dt = jnp.dtype(self.dtype)
        raw = jnp.asarray(raw, dt)
        positive = jax.lax.bitcast_convert_type(raw, jnp.dtype(f"int{dt.itemsize * 8}")) > 0
        if eps > 0:
            positive = jnp.ones_like(positive)
        tiny = jnp.asarray(np.finfo(dt).tiny, dt)
        x = jnp.maximum(raw + jnp.asarray(eps, dt), tiny)
        v = jnp.clip(jnp.power(x, jnp.asarray(alpha, dt)), tiny, jnp.asarray(self.max_leaf, dt))
        return jnp.where(positive, v, jnp.zeros((), dt))

    def weights(self, tree: "TreeState", p, beta: float):
        """Importance weights ``(p / p_min) ** -beta`` of sampled leaf values ``p``, with
        ``p_min`` the smallest positive leaf: in ``[finfo(dtype).tiny, 1]`` where ``p > 0``
        (0 elsewhere). Computed in log space: with leaves in ``[tiny, max_leaf]`` the ratio
        ``p / p_min`` itself can overflow float32 (it would give weight 0)."""
        dt = jnp.dtype(self.dtype)
        p = jnp.asarray(p, dt)
        tiny = jnp.asarray(np.finfo(dt).tiny, dt)
        pos = p > 0
        logw = -jnp.asarray(beta, dt) * (jnp.log(jnp.where(pos, p, 1)) - jnp.log(jnp.maximum(self.min(tree), tiny)))
        w = jnp.clip(jnp.exp(jnp.minimum(logw, 0)), tiny, 1)
        return jnp.where(pos, w, jnp.zeros((), dt))

    # ---------------------------------------------------------------- queries
    def total(self, tree: TreeState):
        """Sum of all leaves (the root), a scalar."""
        return tree.sums[0][0]

    def min(self, tree: TreeState):
        """Smallest *positive* leaf (``+inf`` if none): zero leaves are never sampled, so they
        do not take part in weight normalisation."""
        return tree.mins[0][0]

    def leaves(self, tree: TreeState):
        """``[n]`` leaf values."""
        return tree.sums[-1][: self.n]

    def get(self, tree: TreeState, idx):
        """Leaf values at ``idx`` (any int shape; out-of-range indices are clipped)."""
        return jnp.take(tree.sums[-1], idx, mode="clip")

    # ---------------------------------------------------------------- update
    def update(self, tree: TreeState, idx, values, valid=None, unique: bool = False) -> TreeState:
        """Set leaves ``idx`` (int ``[K]``) to ``values`` (``[K]``); returns the new tree.

        Entries with ``valid`` False (bool ``[K]``) or ``idx`` outside ``[0, n)`` are ignored.
        Duplicate indices: **the last occurrence** (highest position in ``idx``) wins.
        ``unique=True`` promises there are no duplicates among the valid entries (skips the
        resolution). ``values`` must be ``>= 0`` (not checked here; callers sanitise).
        O(K log_B n): every touched ancestor is recomputed from its children.
        """
        b = self.branching
        idx = jnp.asarray(idx, jnp.int32).reshape(-1)
        values = jnp.asarray(values, self.dtype).reshape(-1)
        k = idx.shape[0]
        leaf_size = self.sizes[-1]
        ar = jnp.arange(k, dtype=jnp.int32)
        ok = (idx >= 0) & (idx < self.n)
        if valid is not None:
            ok = ok & jnp.asarray(valid, bool).reshape(-1)
        # Distinct out-of-range targets for ignored entries keep every scatter index unique.
        spare = leaf_size + ar
        idx = jnp.where(ok, idx, spare)
        scratch = tree.scratch
        if not unique:
            scratch, won = last_wins(scratch, idx)
            idx = jnp.where(won, idx, spare)
        sums = list(tree.sums)
        mins = list(tree.mins)
        sums[-1] = sums[-1].at[idx].set(values, mode="drop", unique_indices=True)
        node = idx
        for lvl in range(self.depth - 1, -1, -1):
            if self.sizes[lvl] <= self.dense_levels or self.sizes[lvl] <= k:
                # Small levels are recomputed whole: a dense reduction of a few thousand
                # values is one fused loop, cheaper on CPU than a gather + scatter pair.
                sums[lvl], mins[lvl] = self._reduce(sums, mins, lvl)
                continue
            # Ignored entries map to the last parent that has children: recomputing a node
            # from its children is idempotent, so that is harmless and keeps shapes static.
            # Duplicate parents are all written the same value (from the updated level
            # below), so the unordered scatter is deterministic.
            node = jnp.minimum(node // b, self.sizes[lvl + 1] // b - 1)
            ch_s = sums[lvl + 1].reshape(-1, b)[node]
            ch_m = _positive(ch_s) if lvl == self.depth - 1 else mins[lvl + 1].reshape(-1, b)[node]
            sums[lvl] = sums[lvl].at[node].set(jnp.sum(ch_s, axis=1))
            mins[lvl] = mins[lvl].at[node].set(jnp.min(ch_m, axis=1))
        return TreeState(tuple(sums), tuple(mins), scratch)

    def _reduce(self, sums, mins, lvl):
        """Level ``lvl`` (sum and min, padded) reduced whole from level ``lvl + 1``."""
        child_m = _positive(sums[-1]) if lvl == self.depth - 1 else mins[lvl + 1]
        s = sums[lvl + 1].reshape(-1, self.branching).sum(axis=1)
        m = child_m.reshape(-1, self.branching).min(axis=1)
        pad = self.sizes[lvl] - s.shape[0]
        return (jnp.concatenate([s, jnp.zeros((pad,), s.dtype)]) if pad else s,
                jnp.concatenate([m, jnp.full((pad,), jnp.inf, m.dtype)]) if pad else m)

    def from_leaves(self, tree: TreeState, values) -> TreeState:
        """A tree whose leaves are ``values`` (``[n]``, ``>= 0``), built in O(n)."""
        leaves = jnp.zeros((self.sizes[-1],), self.dtype).at[: self.n].set(jnp.asarray(values, self.dtype))
        sums = (*tree.sums[:-1], leaves)
        return self.rebuild(TreeState(sums, tree.mins, tree.scratch))

    def rebuild(self, tree: TreeState) -> TreeState:
        """Recompute every internal node from the leaves (O(n); for tests and repairs)."""
        sums = list(tree.sums)
        mins = list(tree.mins)
        for lvl in range(self.depth - 1, -1, -1):
            sums[lvl], mins[lvl] = self._reduce(sums, mins, lvl)
        return TreeState(tuple(sums), tuple(mins), tree.scratch)

    # ---------------------------------------------------------------- search
    def find(self, tree: TreeState, mass, with_value: bool = False):
        """Leaf index of each prefix-sum ``mass`` (float ``[K]``, in ``[0, total)``): the leaf
        ``i`` with ``sum(leaves[:i]) <= mass < sum(leaves[:i+1])``.

        Never returns a zero leaf while ``total > 0``: at each level the chosen child is
        clamped to the last child with a positive sum, so a mass that float rounding pushed
        past the end of a subtree falls back on its last non-empty child. Returns int32 ``[K]``
        (and, with ``with_value``, the leaf values ``[K]``: read during the descent, which
        matters for speed, see :meth:`sample`).
        """
        b = self.branching
        mass = jnp.asarray(mass, self.dtype)
        node = jnp.zeros(mass.shape, jnp.int32)
        zero = jnp.zeros(mass.shape, self.dtype)
        for lvl in range(1, self.depth + 1):
            ch = tree.sums[lvl].reshape(-1, b)[node]
            # Unrolled over the B children (elementwise ops XLA fuses into one loop; a
            # cumsum/reduce_window is several times slower on CPU).
            run, before, last_before, val, last_val = zero, zero, zero, zero, zero
            c = jnp.zeros(mass.shape, jnp.int32)
            last_pos = jnp.zeros(mass.shape, jnp.int32)
            for j in range(b):
                x = ch[..., j]
                nxt = run + x
                below = nxt <= mass  # child j lies entirely below the mass: skip it
                c = c + below.astype(jnp.int32)
                before = jnp.where(below, nxt, before)
                # value of the first child not below the mass (the chosen one)
                val = jnp.where(below, val, jnp.where(c == j, x, val))
                pos = x > 0
                last_pos = jnp.where(pos, j, last_pos)
                last_before = jnp.where(pos, run, last_before)
                last_val = jnp.where(pos, x, last_val)
                run = nxt
            over = c > last_pos
            c = jnp.where(over, last_pos, c)
            before = jnp.where(over, last_before, before)
            val = jnp.where(over, last_val, val)
            mass = jnp.maximum(mass - before, 0)
            node = node * b + c
            # Computed once per level, not re-derived by every later use: see ``rlbuf._xla.materialize``.
            if lvl < self.depth:
                node, mass = _xla.materialize((node, mass))
            else:
                node, val = _xla.materialize((node, val))
        return (node, val) if with_value else node

    def sample(self, tree: TreeState, key, k: int, stratified: bool = True, with_value: bool = False):
        """``k`` leaf indices drawn with probability ``leaf / total`` (int32 ``[k]``), and with
        ``with_value`` their leaf values.

        ``stratified``: draw one mass uniformly in each of ``k`` equal segments of
        ``[0, total)`` (lower variance, same marginal distribution of a uniformly chosen
        output position; outputs are ordered by prefix sum). Otherwise i.i.d. draws.

        Why ``with_value`` rather than a separate ``get``: a read of the leaf array whose
        result the next ``update`` does not depend on makes XLA copy the whole ``[n]`` leaf
        array before that update's scatter (measured in a scan: O(n) per step); values read
        during the descent come from the same gather as the indices the update consumes.
        """
        u = jax.random.uniform(key, (k,), dtype=self.dtype)
        if stratified:
            u = (jnp.arange(k, dtype=self.dtype) + u) / k
        return self.find(tree, u * self.total(tree), with_value)
