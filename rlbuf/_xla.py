"""XLA tricks, named and in one place.

Each works around how XLA compiles a pattern; the timings they were tuned with (a shared
2-core CPU) are in ``BENCHMARKS.md`` ("XLA tricks"), not here. Tricks that only pay on CPU
are gated on ``jax.default_backend()`` at trace time (on GPU a data-dependent loop or
conditional can cost a host round trip); every form computes the same values.

- :func:`run_at_most_once` (all backends): a conditional update of a large carry without
  copying it, which stays conditional under ``vmap`` (``PerWorkerReplayBuffer``).
- :func:`materialize` (CPU): compute a value once into a buffer instead of letting fusion
  recompute it in every consumer (the sum tree's descent, once per level).
- :func:`wrap_once` (CPU): ``x % n`` for ``0 <= x < 2n`` as a compare and subtract.
- :func:`wrap_near` (all backends): ``x % n`` for ``-n <= x < 2n`` as two compares.
- :func:`searchsorted_method` (CPU): which ``jnp.searchsorted`` method for a small sorted array.
- :func:`below` (all backends; it defines the random stream): integers in ``[0, n)`` from
  uniform 32-bit words by multiply-shift in 16-bit limbs.
- :func:`count_true` (CPU): running count of a bool mask from packed words and bit counts, not a cumsum.
- :func:`last_true` (CPU): last True position so far from packed words, not a cummax.
- :func:`take_few` (CPU): a few elements of a large array as dynamic slices, not a gather.
- :func:`take_columns` (CPU): a gather from an ``[..., k]`` array one trailing column at a time.
- :func:`lane_windows` (CPU): read and update a ``[lanes, capacity]`` ring near per-lane heads
  through small windows (dynamic slices in, dynamic-update-slices out), not a gather/scatter.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

_generic = False  # set by generic_forms(); read at trace time only


def on_cpu() -> bool:
    """Whether the program is being traced for the CPU backend (and the CPU forms are wanted)."""
    return jax.default_backend() == "cpu" and not _generic


@contextlib.contextmanager
def generic_forms(generic: bool = True):
    """Within this block, functions *traced* use the generic forms of the CPU-gated tricks (as
    on GPU/TPU): for the benchmark and the tests that compare the two forms. Already compiled
    functions are unaffected (jit caches on the function, not on this switch)."""
    global _generic
    old, _generic = _generic, generic
    try:
        yield
    finally:
        _generic = old


def run_at_most_once(pred, body, carry, deps=(), barrier=False):
    """``body(carry, *deps) if pred else carry``, with ``carry`` updated in place.

    Why not ``lax.cond``: a cond's untaken identity branch copies its large operands (an
    ``[L, capacity]`` queue, a permutation, a sum tree) on every call, whereas a while loop's
    carry is updated in place. ``deps`` (arrays the body reads but does not return) go through
    an ``optimization_barrier`` together with the carry, which keeps XLA from hoisting the
    body's O(capacity) work, loop-invariant but for the carry, out of the loop (it would then
    run on every call).

    A large array the body reads that is also live after the loop (e.g. records the caller
    returns) may ride in ``carry``, returned unchanged by ``body``, rather than in ``deps``:
    measured faster for the slice sampler's ``[4, 25000]`` records (~15 µs per ``add``; the
    compiled HLO shows no copy of them in either form, so the cause is XLA:CPU's scheduling
    or buffer handling, not identified). ``barrier=True`` puts the carry through the
    ``optimization_barrier`` even without ``deps``, so XLA cannot hoist work on the unchanged
    parts out of the loop either.

    Why it is also the form of every data-dependent branch of the samplers (rather than
    ``lax.cond(pred, costly, cheap)``, written ``run_at_most_once(~pred, costly, cheap())``):
    under ``vmap`` a cond whose predicate is batched becomes a ``select`` that runs *both*
    branches for every member, so the O(capacity) branch would run on every call; a while loop
    with a batched predicate stays a loop, which runs its body only when some member needs it.
    """

    def step(c):
        x, d = jax.lax.optimization_barrier((c[0], tuple(deps))) if deps or barrier else (c[0], ())
        return body(x, *d), False

    return jax.lax.while_loop(lambda c: c[1], step, (carry, jnp.asarray(pred, bool)))[0]


def materialize(xs):
    """``xs`` (a pytree of arrays, the first integer or float), unchanged, but computed once into
    buffers.

    Why: XLA:CPU fuses cheap elementwise producers into *every* consumer, recomputing them; the
    sum tree's child choice (~70 elementwise ops per level) was recomputed inside each later
    level's gather and each consumer of the sampled indices (2-3x the whole sample + update).
    ``lax.optimization_barrier`` does not prevent this on CPU (it is removed before fusion); a
    loop is never fused through. The loop runs zero times (its predicate, ``xs[0]``'s first element ``< 0``,
    is false for the callers' non-negative values) and, unlike a ``cond``, stays a loop under
    ``vmap``. Other backends: ``optimization_barrier``.
    """
    if not on_cpu():
        return jax.lax.optimization_barrier(xs)
    # One element decides (not a reduction over the whole array: ~1.3 µs for [4, 1000]); the
    # callers' values are all non-negative, so it is never negative either.
    first = jax.tree_util.tree_leaves(xs)[0]
    pred = first.reshape(-1)[0] < 0 if first.size else False
    return run_at_most_once(pred, lambda y: jax.tree_util.tree_map(jnp.zeros_like, y), xs)


def wrap_once(x, n):
    """``x % n`` for ``0 <= x < 2 * n``. On CPU a compare and subtract: index math is fused into
    the gathers that use it, where an integer modulo per element does not vectorize."""
    if not on_cpu():
        return x % n
    return jnp.where(x >= n, x - n, x)


def wrap_near(x, n):
    """``x % n`` for ``-n <= x < 2 * n`` (slots up to one ring behind or ahead of a head), as two
    compares on every backend: no integer division in index math that XLA fuses into scatters."""
    return jnp.where(x < 0, x + n, jnp.where(x >= n, x - n, x))


def searchsorted_method(size: int) -> str:
    """``jnp.searchsorted`` method for a sorted array of ``size`` elements: on CPU, compare
    against all of them when few (no loop), else an unrolled binary search; elsewhere the
    default ``"scan"``."""
    if not on_cpu():
        return "scan"
    return "compare_all" if size <= 64 else "scan_unrolled"


def below(bits, n):
    """Integers in ``[0, n)`` from uniform uint32 ``bits`` (``n``: int32 array, ``1 <= n < 2**31``).

    Multiply-shift: ``floor(bits * n / 2**32)``, computed in 16-bit limbs so nothing overflows
    uint32. Each value has probability within ``1 / 2**32`` of ``1 / n`` (TorchRL's
    ``floor(rand() * n)`` on float32 is coarser). Why not ``jax.random.randint``: it runs three
    threefry hashes per call, which on CPU dominated the cost of a whole slice sample.
    """
    x = bits.astype(jnp.uint32)
    n = n.astype(jnp.uint32)
    m16 = jnp.uint32(0xFFFF)
    xh, xl, nh, nl = x >> 16, x & m16, n >> 16, n & m16
    mid1, mid2 = xh * nl, xl * nh
    carry = ((xl * nl) >> 16) + (mid1 & m16) + (mid2 & m16)
    return (xh * nh + (mid1 >> 16) + (mid2 >> 16) + (carry >> 16)).astype(jnp.int32)


def count_true(mask, block: int = 32):
    """``jnp.cumsum(mask, axis=-1, dtype=int32)`` of a bool ``[..., T]`` array (``T < 2**24``).

    Why: jax lowers a cumulative sum to a chain of ``reduce-window`` ops that XLA:CPU runs at
    ~15 ns per element (the largest item of a slice sampler's ``add``). On CPU the mask is
    packed into 32-bit words (one reduction); a step's count is the words before it (a small
    prefix over ``T / 32`` word counts) plus the population count of its word's lower bits:
    elementwise, so XLA fuses it into each consumer. (It replaced two float32 matmuls with
    triangular ones matrices, 1.3x slower for ``[4, 1000]``.) Other backends keep the cumsum
    (a parallel scan there).
    """
    mask = jnp.asarray(mask, bool)
    t = mask.shape[-1]
    if not on_cpu() or t <= 1:
        return jnp.cumsum(mask, axis=-1, dtype=jnp.int32)
    if t >= 2**24:
        raise ValueError(f"count_true: an axis of {t} steps is too long for the exact float32 form")
    lead = mask.shape[:-1]
    words, nw, bit = _pack_words(mask)
    wc = jax.lax.population_count(words).astype(jnp.int32)
    if nw <= 64:  # words before each word: compare against all (one small reduction)
        earlier = np.arange(nw)[:, None] < np.arange(nw)[None, :]  # [v, w]: v < w
        before = jnp.sum(jnp.where(jnp.asarray(earlier)[None], wc[:, :, None], 0), axis=1, dtype=jnp.int32)
    else:
        before = _prefix_matmul(wc.astype(jnp.float32), block) - wc
    upto = (jnp.uint32(2) << bit) - 1  # bits 0..j (j = 31 wraps to all ones)
    within = jax.lax.population_count(words[:, :, None] & upto).astype(jnp.int32)
    out = (before[:, :, None] + within).reshape(-1, nw * 32)[:, :t]
    return out.reshape(*lead, t)


def _pack_words(mask):
    """A bool ``[..., T]`` mask as ``uint32`` words ``[R, ceil(T / 32)]`` (rows flattened; bit
    ``j`` of word ``w`` is step ``32 w + j``, zero past ``T``), their count and the bit numbers.

    Why not ``sum(mask << bit)`` over 32 steps: a 32-wide reduction per word (4.3 vs 2.8 µs for
    ``[4, 1000]``, one core). Each group of 4 steps, one byte each (0 or 1), is read as one ``uint32``
    ``x = sum_i b_i << 8 i``; ``x * 0x01020408`` puts ``b_i`` at bit ``24 + i`` (the partial
    products ``b_i << (8 i + 24 - 7 j)`` land on distinct bits, so nothing carries), giving a
    nibble; a word is the sum of its 8 nibbles, shifted."""
    t = mask.shape[-1]
    nw = -(-t // 32)
    m = jnp.pad(mask.reshape(-1, t), ((0, 0), (0, nw * 32 - t))).astype(jnp.uint8).reshape(-1, nw * 8, 4)
    quads = jax.lax.bitcast_convert_type(m, jnp.uint32)  # [R, nw * 8]: byte i of quad q is step 4 q + i
    nib = ((quads * jnp.uint32(0x01020408)) >> 24).reshape(-1, nw, 8)
    # (a reduction, not 8 or-ed terms: XLA:CPU then computes the words once into a buffer
    # instead of recomputing them in every consumer)
    words = jnp.sum(nib << (4 * jnp.arange(8, dtype=jnp.uint32)), axis=-1, dtype=jnp.uint32)
    return words, nw, jnp.arange(32, dtype=jnp.uint32)


def last_true(mask):
    """Position of the last True at or before each step of a bool ``[..., T]`` array, ``-1``
    where there is none (int32; ``lax.cummax`` of ``where(mask, arange(T), -1)``).

    Why: on CPU a cumulative max is a chain of ``reduce-window`` ops (slow, as for
    :func:`count_true`). There, as in :func:`count_true`, the mask is packed into 32-bit words:
    a step's answer is the highest set bit at or below it in its word (a count of leading
    zeros), else the last set bit of the earlier words (a small table over ``T / 32`` words):
    elementwise, fused into each consumer. Other backends keep the cummax.
    """
    mask = jnp.asarray(mask, bool)
    t = mask.shape[-1]
    if not on_cpu() or t <= 1:
        return jax.lax.cummax(jnp.where(mask, jnp.arange(t, dtype=jnp.int32), -1), axis=mask.ndim - 1)
    lead = mask.shape[:-1]
    words, nw, bit = _pack_words(mask)
    base = jnp.arange(nw, dtype=jnp.int32) * 32 + 31
    top = jnp.where(words != 0, base - jax.lax.clz(words).astype(jnp.int32), -1)  # last set bit per word
    if nw <= 64:
        earlier = np.arange(nw)[:, None] < np.arange(nw)[None, :]  # [v, w]: v < w
        before = jnp.max(jnp.where(jnp.asarray(earlier)[None], top[:, :, None], -1), axis=1)
    else:
        before = jnp.concatenate([jnp.full_like(top[:, :1], -1), jax.lax.cummax(top, axis=1)[:, :-1]], axis=1)
    upto = (jnp.uint32(2) << bit) - 1  # bits 0..j (j = 31 wraps to all ones)
    low = words[:, :, None] & upto
    here = base[:, None] - jax.lax.clz(low).astype(jnp.int32)
    out = jnp.where(low != 0, here, before[:, :, None]).reshape(-1, nw * 32)[:, :t]
    return out.reshape(*lead, t)


def _prefix_matmul(y, block: int):
    """Inclusive prefix sums along the last axis of float32 ``[R, n]`` small integers (exact while
    the sums stay below ``2**24``): within blocks of ``block`` a matmul with an upper-triangular
    ones matrix, then the block totals the same way."""
    t = y.shape[-1]
    nb = -(-t // block)
    y = jnp.pad(y, ((0, 0), (0, nb * block - t))).reshape(-1, nb, block)
    inner = jnp.dot(y, jnp.asarray(np.triu(np.ones((block, block), np.float32))), precision="highest")
    before = jnp.dot(inner[:, :, -1], jnp.asarray(np.triu(np.ones((nb, nb), np.float32), 1)), precision="highest")
    out = (inner + before[:, :, None]).reshape(-1, nb * block)[:, :t]
    return out.astype(jnp.int32)


#: At most this many points are read by :func:`take_few` as separate dynamic slices.
TAKE_FEW_POINTS = 8
#: Arrays smaller than this (elements) are read by an ordinary gather.
TAKE_FEW_MIN_SIZE = 1 << 15


def take_few(arr, *idx):
    """``arr[idx]`` for a few points: ``idx`` are int arrays (broadcast together to a shape ``S``)
    indexing the leading ``len(idx)`` axes of ``arr``; returns ``S + arr.shape[len(idx):]``.
    Indices must be in range (no clipping or wrapping is applied).

    Why: XLA:CPU's parallel task assignment splits a gather from a large operand (here, a
    ``[lanes, capacity]`` record or queue ring of a 1M buffer) across its thread pool however few
    elements it reads: on 2 cores a gather of 4 values from a ``[4, 250000]`` array cost 0.7-2 µs of
    CPU time, against ~0.2 µs from a ``[4, 2500]`` one or as dynamic slices (measured under load).
    A dynamic slice is not split, so on CPU, for at most :data:`TAKE_FEW_POINTS` points (32 slices cost more than the
    split gather: their concatenation does not vectorize) of an array of at least
    :data:`TAKE_FEW_MIN_SIZE` elements, each point is its own ``lax.dynamic_slice`` (fused into one
    loop). Elsewhere (and for many points or small arrays) an ordinary gather.
    """
    idx = jnp.broadcast_arrays(*[jnp.asarray(i, jnp.int32) for i in idx])
    shape = idx[0].shape
    n_pts = int(np.prod(shape, dtype=np.int64))
    rest = arr.shape[len(idx):]
    if not on_cpu() or n_pts > TAKE_FEW_POINTS or arr.size < TAKE_FEW_MIN_SIZE or n_pts == 0:
        return arr[tuple(idx)]
    flat = [i.reshape(-1) for i in idx]
    zeros = (jnp.zeros((), jnp.int32),) * len(rest)
    pts = [jax.lax.dynamic_slice(arr, tuple(i[p] for i in flat) + zeros, (1,) * len(idx) + rest) for p in range(n_pts)]
    return jnp.concatenate([x.reshape(1, *rest) for x in pts], axis=0).reshape(*shape, *rest)


#: XLA:CPU splits a gather across its thread pool from an operand of this many bytes (its cost
#: model's 256 KB per thread, for memory-bound ops, times 2 threads).
GATHER_SPLIT_BYTES = 1 << 19


def take_columns(arr, *idx):
    """``arr[idx]`` for an ``[..., k]`` array (``idx`` index its leading axes), read one trailing
    column at a time on CPU: ``jnp.stack([arr[..., c][idx] for c in range(k)], -1)``.

    Why: XLA:CPU counts a gather's whole operand as the bytes it accesses and splits a gather
    from 512 KB or more across its thread pool, however few elements it reads; a column's
    gather (the strided slice fuses into it) counts only that column. So a slice sampler's
    32-entry read of a ``[4, 25000, 2]`` queue (800 KB, 100k transitions) is not split. Only
    where that is what it changes (the array is split, a column would not be): a smaller array
    is not split either way, and at 1M a column is still 4 MB (two split gathers instead of one).
    """
    col_bytes = arr.size // max(arr.shape[-1], 1) * arr.dtype.itemsize
    if not on_cpu() or arr.shape[-1] == 1 or not col_bytes < GATHER_SPLIT_BYTES <= arr.size * arr.dtype.itemsize:
        return arr[idx]
    return jnp.stack([arr[..., c][idx] for c in range(arr.shape[-1])], axis=-1)


class LaneWindows:
    """Per-lane windows of a ``[L, C, ...]`` ring (:func:`lane_windows`): ``data`` ``[L, C', ...]``
    holds every window's slots, :meth:`pos` says where a ring slot is in it, and :meth:`put`
    writes the first window back. In the generic form (not CPU, or a small ring) ``data`` is the
    ring itself and :meth:`pos` the identity, so callers write one code path for both."""

    def __init__(self, data, los=(), widths=(), wrap=0, cap=None):
        self.data, self.los, self.widths, self.wrap = data, los, widths, wrap
        self.cap = data.shape[1] if cap is None else cap

    @property
    def windowed(self) -> bool:
        return bool(self.widths)

    def pos(self, slots):
        """Positions along ``data``'s axis 1 of ring slots ``slots`` (``[L, n]`` int32, each in
        one of the windows; a slot outside ``[0, C)`` maps to ``C'``, which a scatter drops).
        A slot in the first window is always found there, whatever other window it is also in,
        so writes (into the first window) and later reads agree."""
        valid = (slots >= 0) & (slots < self.cap)
        if not self.windowed:
            return jnp.where(valid, slots, self.cap)
        n = self.data.shape[1]
        base = np.cumsum((0,) + self.widths)
        out = self.wrap_base + slots  # a wrapped slot (< wrap): the shared copy of [0, wrap)
        for k in range(len(self.widths) - 1, -1, -1):  # the first window found wins
            d = slots - self.los[k][:, None]
            hit = (d >= 0) & (d < self.widths[k]) if k == 0 else (d >= 0) & (d < self.widths[k]) & (slots >= self.wrap)
            out = jnp.where(hit, int(base[k]) + d, out)
        return jnp.where(valid, out, n)

    @property
    def wrap_base(self) -> int:
        return int(sum(self.widths))

    def take(self, slots, column=None):
        """``ring[l, slots[l, j]]`` for ``[L, n]`` slots (each in a window), ``[L, n, ...]``; with
        ``column`` (an ``[L, C, k]`` ring), ``ring[l, slots[l, j], column]``, ``[L, n]``.

        Why ``column``: XLA:CPU counts a gather's whole operand as the bytes it accesses and splits
        a gather from 512 KB or more across its threads (:func:`take_columns`); a column sliced
        from the flattened ``[L * C, k]`` ring counts only its own bytes (slicing the ``[L, C, k]``
        ring before flattening does not: the slice then sits behind a reshape)."""
        n_l, n = self.data.shape[:2]
        lanes = jnp.arange(n_l, dtype=jnp.int32)[:, None]
        flat = self.data.reshape(n_l * n, *self.data.shape[2:])
        if column is not None:
            flat = flat[:, column]
        return flat[lanes * n + jnp.minimum(self.pos(slots), n - 1)]

    def set(self, slots, values) -> "LaneWindows":
        """The windows with ``ring[l, slots[l, j]] = values[l, j]`` (``slots`` ``[L, n]``, each in
        the first window or outside ``[0, C)`` to skip it; the kept ``(l, slot)`` distinct)."""
        n_l, n = self.data.shape[:2]
        lanes = jnp.arange(n_l, dtype=jnp.int32)[:, None]
        if self.windowed:
            p = self.pos(slots)
            keep = p < n
        else:  # (the same test, two ops fewer per index: see the module docstring's split ops)
            p = slots
            keep = (slots >= 0) & (slots < n)
        return self._scatter(jnp.where(keep, lanes * n + p, n_l * n), values)

    def _scatter(self, flat, values) -> "LaneWindows":
        """The windows with ``data.reshape(L * C', ...)[flat] = values`` (``flat`` ``[L, n]``,
        in ``[0, L * C']``, distinct; ``L * C'`` drops the write)."""
        rest = self.data.shape[2:]
        # (never negative: no wrap of negative indices, 3 ops per index fewer in the fusion that
        # computes them, which XLA:CPU otherwise splits across threads for a long add)
        data = self.data.reshape(-1, *rest).at[flat.reshape(-1)].set(
            values.reshape(-1, *rest), mode="drop", unique_indices=True, wrap_negative_indices=False)
        return LaneWindows(data.reshape(self.data.shape), self.los, self.widths, self.wrap, self.cap)

    def set_after(self, head, offsets, keep, values) -> "LaneWindows":
        """:meth:`set` at the slots ``(head[l] + offsets[l, j]) mod C`` where ``keep`` (``head``:
        ``[L]`` in ``[0, C)``; ``offsets``: ``[L, n]`` in ``[0, C]``; ``keep``: ``[L, n]`` bool).

        Why: in the generic form the flat index is ``l * C + head[l] + offsets`` less ``C`` past
        the lane's end: ~6 ops per index instead of ~15 (wrap, then :meth:`set`'s checks). For a
        long add XLA:CPU splits across its threads every fusion that does more arithmetic than
        it moves bytes (``[4, 1000]`` int32 indices: ~9 ops each), which on a loaded 2-core
        machine costs more than the ops themselves."""
        cap = self.cap
        if self.windowed:
            slot = head[:, None] + offsets
            return self.set(jnp.where(keep, jnp.where(slot >= cap, slot - cap, slot), cap), values)
        n_l = self.data.shape[0]
        lane_end = (jnp.arange(n_l, dtype=jnp.int32) + 1) * cap
        flat = (lane_end - cap + head)[:, None] + offsets
        flat = jnp.where(flat >= lane_end[:, None], flat - cap, flat)
        return self._scatter(jnp.where(keep, flat, n_l * cap), values)

    def put(self, arr):
        """``arr`` (the ring the windows were read from) with the first window written back."""
        if not self.windowed:
            return self.data
        w = self.widths[0]
        zeros = (0,) * (arr.ndim - 2)
        b = self.wrap_base
        # The wrapped copy first, the first window last: where they overlap, the first holds the writes.
        arr = jax.lax.dynamic_update_slice(arr, self.data[:, b:b + self.wrap], (0, 0, *zeros))
        for lane in range(arr.shape[0]):
            arr = jax.lax.dynamic_update_slice(arr, self.data[lane:lane + 1, :w], (lane, self.los[0][lane], *zeros))
        return arr


#: :func:`lane_windows` windows a ring of at least this many bytes (XLA:CPU splits a scatter into
#: it: ring read + written make 2 x 256 KB, its cost model's per-thread minimum for memory-bound ops)...
LANE_WINDOWS_MIN_BYTES = 1 << 18
#: ... of at most this many lanes (each lane's write-back is its own op)...
LANE_WINDOWS_MAX_LANES = 8
#: ... for windows of at most this many slots per lane in all (a few steps' bookkeeping: the
#: copies in and out grow with the width, a scatter with its updates only)...
LANE_WINDOWS_MAX_WIDTH = 128
#: ... and at least this many times the windows' total width.
LANE_WINDOWS_MAX_FRACTION = 4


def lane_windows(arr, windows) -> LaneWindows:
    """Windows of a ``[L, C, ...]`` ring: ``windows`` is a sequence of ``(start, width)``, ``start``
    ``[L]`` int32 in ``[0, C)`` and ``width`` a static int: window ``k`` of lane ``l`` holds the
    slots ``start[l] .. start[l] + width - 1`` modulo ``C``. Read and update only slots inside
    the windows (each :class:`LaneWindows` method says which); only the first window is written
    back (:meth:`LaneWindows.put`).

    Why: XLA:CPU's parallel task assignment splits across its thread pool every scatter into a
    ring of more than 512 KB (its output is the whole ring) and the small gathers that read it
    back, however few elements they touch; on 2 cores each split op cost ~2 µs of CPU time
    (BENCHMARKS.md, "Performance, round 3"). A dynamic slice and an in-place
    dynamic-update-slice are never split. So on CPU, for a ring that would be split (at least
    :data:`LANE_WINDOWS_MIN_BYTES`) of at most :data:`LANE_WINDOWS_MAX_LANES` lanes, windows of
    at most :data:`LANE_WINDOWS_MAX_WIDTH` slots in all (at least
    :data:`LANE_WINDOWS_MAX_FRACTION` times fewer than the ring's), each lane's window is a
    dynamic slice (clamped to end inside the ring), plus one static slice ``[0, max width)``
    shared by all for the slots that wrap past the ring's end; gathers and scatters touch the
    ``[L, C', ...]`` copy; the write-back is one dynamic-update-slice per lane and one for the
    wrapped part. Elsewhere (and for smaller rings, where the windows' extra ops would not pay)
    the ring itself.
    """
    widths = tuple(int(w) for _, w in windows)
    c = arr.shape[1]
    if (not on_cpu() or arr.size * arr.dtype.itemsize < LANE_WINDOWS_MIN_BYTES or arr.shape[0] > LANE_WINDOWS_MAX_LANES
            or sum(widths) > LANE_WINDOWS_MAX_WIDTH or LANE_WINDOWS_MAX_FRACTION * sum(widths) > c):
        return LaneWindows(arr)
    zeros = (0,) * (arr.ndim - 2)
    los, parts = [], []
    for start, w in windows:
        lo = jnp.minimum(jnp.asarray(start, jnp.int32), c - w)  # (a window never ends past the ring)
        los.append(lo)
        shape = (1, w, *arr.shape[2:])
        parts.append(jnp.concatenate(
            [jax.lax.dynamic_slice(arr, (lane, lo[lane], *zeros), shape) for lane in range(arr.shape[0])], axis=0))
    wrap = max(widths)
    parts.append(arr[:, :wrap])
    return LaneWindows(jnp.concatenate(parts, axis=1), tuple(los), widths, wrap, c)
