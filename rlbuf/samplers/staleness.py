"""``StalenessAwareSampler``: items drawn by how fresh the policy that produced them is.

Semantics (TorchRL's ``StalenessAwareSampler``, jittable and with replacement):

- Every stored step carries the policy version that acted (``version_key``, an int per step,
  as collectors store at ``("collector", "policy_version")`` when given ``policy_version=``).
  The learner's *current* version lives in the sampler state, set with
  :func:`set_policy_version` (jittable, no recompilation). An item's staleness is
  ``current - stored``.
- Item ``i`` is drawn with probability ``w(s_i) / sum_j w(s_j)`` over the items with
  ``s_j <= max_staleness`` (all items when ``max_staleness`` is None), i.i.d. for the
  ``batch_size`` items (TorchRL draws distinct items via ``torch.multinomial`` without
  replacement when the batch fits; the probability of each single draw is the same).
  ``w`` is ``weight`` (a function of an int32 staleness array, returning float weights;
  negative, NaN or infinite weights count as 0), by default ``1 / (s + 1)``. A stored version
  ahead of the current one (``s < 0``: the learner's version was not pushed) counts as fresh
  (``s = 0``) for the weight and the window; ``info["staleness"]`` reports it as it is.
- ``info["staleness"]``: int32 ``[batch_size]``, ``current - stored`` version of each item.
  When no item is within the window (or the buffer is empty) ``can_sample`` is False and the
  batch is padding (zeros, ``info["mask"]`` False).

Cost: items of one version are contiguous per lane in ring order (each ``add`` writes the
next steps of every lane), so the sampler keeps *segments*, maximal runs of steps whose
versions (one per lane) do not change, in a ring table of ``max_segments`` entries (start
stamp, version per lane), updated in O(lanes x T) per ``add``. A draw picks a (segment, lane)
by its mass ``live_steps x w(staleness)`` (one prefix sum over ``max_segments x n_lanes``
entries per ``sample``, a binary search per item) and then a step uniformly inside it: the
cost per sample does not grow with the capacity. When the ring holds more than
``max_segments`` version runs, the steps of the oldest runs (dropped from the table) are
never returned (``unreachable`` in :func:`stats`); with one version per ``add`` that needs
more than ``max_segments`` adds of distinct versions in the buffer at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _ring, _tree, _xla
from rlbuf.samplers import capabilities
from rlbuf.samplers.base import Sampler
from rlbuf.writers.base import TIME_ORDER

#: Default size of the segment table (version runs tracked at once).
MAX_SEGMENTS = 1024


def default_weight(staleness):
    """TorchRL's default freshness weight, ``1 / (staleness + 1)``."""
    return 1.0 / (staleness.astype(jnp.float32) + 1.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StalenessState(capabilities.PolicyVersioned):
    """- ``version``: int32 ``[]``, the learner's current policy version (:func:`set_policy_version`);
    - ``seg_start``: int32 ``[K]``, ring table of segment start stamps (``rlbuf._ring`` stamps);
    - ``seg_version``: int32 ``[K, n_lanes]``, each segment's stored version per lane;
    - ``n_seg``: int32 ``[]``, segments ever begun (entry ``(n_seg - 1) % K`` is the newest).
    Segment ``j`` covers stamps ``[seg_start[j], next start)`` (the newest: up to ``added``)."""

    version: jax.Array
    seg_start: jax.Array
    seg_version: jax.Array
    n_seg: jax.Array

    def with_policy_version(self, version):
        v = jnp.asarray(version, jnp.int32)
        # A traced version below the current one cannot raise under jit: the version never decreases.
        return dataclasses.replace(self, version=jnp.maximum(self.version, jnp.broadcast_to(v, self.version.shape)))


def _pick(mass, u):
    """Entries of ``mass`` (float ``[N]``, ``>= 0``) drawn with probability ``mass / sum(mass)``,
    one per ``u`` (uniform in ``[0, 1)``, ``[B]``), never a zero-mass entry; and whether the
    total is positive (else entry 0).

    Two levels of ``~sqrt(N)`` (why: a binary search of ``N`` per item, or a prefix sum over
    ``N`` on CPU, cost several times a uniform draw): the block whose running total first
    exceeds ``u * total`` by comparing against every block's running total, then the entry
    inside it the same way (the block's prefix sums by a small triangular matmul)."""
    n = mass.shape[0]
    bl = max(32, 1 << int(np.ceil(np.log2(max(n, 1)) / 2)))
    nb = -(-n // bl)
    m = jnp.pad(mass, (0, nb * bl - n)).reshape(nb, bl)
    tot = jnp.sum(m, axis=1)
    bc = jnp.cumsum(tot)
    total = bc[-1]
    x = jnp.minimum(u * total, jnp.nextafter(total, jnp.float32(0)))  # x < total
    blk = jnp.minimum(jnp.sum(x[:, None] >= bc[None, :], axis=1), nb - 1)
    row = m[blk]  # [B, bl]
    rc = jnp.dot(row, jnp.asarray(np.triu(np.ones((bl, bl), np.float32))), precision="highest")
    # x's place inside the block, kept below the block's own total so a positive entry is hit
    x2 = jnp.clip(x - (bc[blk] - tot[blk]), 0, jnp.nextafter(rc[:, -1], jnp.float32(0)))
    j = jnp.minimum(jnp.sum(x2[:, None] >= rc, axis=1), bl - 1)
    ok = total > 0
    return jnp.where(ok, jnp.minimum(blk * bl + j, n - 1), 0).astype(jnp.int32), ok


def _check_version_value(v) -> None:
    if isinstance(v, jax.core.Tracer):
        return
    a = np.asarray(v)
    if a.ndim or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"set_policy_version: version must be an int scalar, got {v!r}")
    if int(a) < 0:
        raise ValueError(f"set_policy_version: version must be >= 0, got {int(a)}")


def set_policy_version(state: Any, version) -> Any:
    """``state`` (a buffer state or any pytree of them: sharded, per-worker, ensemble) with the
    learner's current policy version of every staleness-aware sampler in it set to ``version``.

    Pure and jittable; ``version`` may be a traced int scalar (no recompilation when it
    changes). A negative version raises (at trace time for a Python int); a version lower than
    the current one raises when both are concrete (eager call) and is ignored under ``jit``
    (the version never decreases). States are found by their type
    (``rlbuf.samplers.capabilities.PolicyVersioned``)."""
    _check_version_value(version)
    subs = capabilities.find_all(state, capabilities.PolicyVersioned)
    if not isinstance(version, jax.core.Tracer):
        for s in subs:
            cur = s.version
            if not isinstance(cur, jax.core.Tracer) and np.any(int(np.asarray(version)) < np.asarray(cur)):
                raise ValueError(
                    f"set_policy_version: version {int(np.asarray(version))} is lower than the current "
                    f"version {int(np.max(np.asarray(cur)))}; versions never decrease"
                )
    return capabilities.update_all(state, capabilities.PolicyVersioned, lambda s: s.with_policy_version(version),
                                   "set_policy_version", "staleness-aware")


@dataclasses.dataclass(frozen=True)
class StalenessAwareSampler(Sampler):
    """Draws items with probability proportional to ``weight(current - stored_version)``, never
    beyond ``max_staleness`` (see the module docstring).

    Args:
      max_staleness: largest staleness an item may have to be drawn (int ``>= 0``); ``None``:
        no bound (TorchRL's ``-1``).
      weight: function of an int32 staleness array (any shape) returning float weights of the
        same shape; ``None``: ``1 / (staleness + 1)``. Must be hashable (a function is).
      version_key: the stored key holding each step's policy version (int, one per step).
      max_segments: size of the segment table (version runs tracked at once; see the module
        docstring for its cost and what happens beyond it).

    Needs a time-ordered writer (``RoundRobinWriter``). ``init`` raises when ``version_key`` is
    not stored or is not one integer per step, naming the key.
    """

    max_staleness: Optional[int] = None
    weight: Optional[Callable] = None
    version_key: Any = ("collector", "policy_version")
    max_segments: int = MAX_SEGMENTS
    pads = True
    requires = frozenset({TIME_ORDER})

    def __post_init__(self):
        m = self.max_staleness
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0):
            raise ValueError(f"StalenessAwareSampler: max_staleness must be None or an int >= 0, got {m!r}")
        k = self.max_segments
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"StalenessAwareSampler: max_segments must be a positive int, got {k!r}")
        if self.weight is not None and not callable(self.weight):
            raise TypeError(f"StalenessAwareSampler: weight must be callable or None, got {self.weight!r}")
        if not isinstance(self.version_key, (str, tuple)) or not _tree.as_tuple(self.version_key):
            raise TypeError(f"StalenessAwareSampler: version_key must be a str or a tuple, got {self.version_key!r}")

    @property
    def _key(self) -> tuple:
        return _tree.as_tuple(self.version_key)

    def _k(self, layout) -> int:
        return int(min(self.max_segments, layout.capacity))

    def check(self, layout, batch_size: int) -> None:
        try:
            shape, dtype = layout.spec(self._key)
        except KeyError:
            raise KeyError(
                f"StalenessAwareSampler: version_key {_tree.key_str(self._key)} is not stored (stored: "
                f"{[_tree.key_str(k) for k in layout.keys()]}); pass policy_version= to the collector's collect"
            ) from None
        if shape != () or not np.issubdtype(dtype, np.integer):
            raise TypeError(
                f"StalenessAwareSampler: version_key {_tree.key_str(self._key)} must hold one integer per step, "
                f"got trailing shape {shape} and dtype {dtype}"
            )

    def init(self, layout):
        k = self._k(layout)
        return StalenessState(
            version=jnp.zeros((), jnp.int32),
            seg_start=jnp.zeros((k,), jnp.int32),
            seg_version=jnp.zeros((k, layout.n_lanes), jnp.int32),
            n_seg=jnp.zeros((), jnp.int32),
        )

    def on_write(self, ring, s, write, data):
        k = s.seg_start.shape[0]
        n_lanes = ring.n_lanes
        v = jnp.asarray(_tree.get(data, self._key)).astype(jnp.int32)
        v = v.reshape(n_lanes, -1)[:, write.skip:]  # [L, n]: the steps that landed, in time order
        n = v.shape[1]
        last = s.seg_version[jnp.maximum(s.n_seg - 1, 0) % k]  # [L], the newest segment's versions
        before = jnp.concatenate([last[:, None], v[:, :-1]], axis=1)
        change = jnp.any(v != before, axis=0).at[0].set(jnp.any(v[:, 0] != last) | (s.n_seg == 0))  # [n]
        rank = jnp.cumsum(change, dtype=jnp.int32) - 1
        n_new = rank[-1] + 1
        keep = change & (rank >= n_new - k)  # only the last k new segments fit the table
        slot = jnp.where(keep, (s.n_seg + rank) % k, k)  # k: dropped
        stamp = ring.added - n + jnp.arange(n, dtype=jnp.int32)
        return dataclasses.replace(
            s,
            seg_start=s.seg_start.at[slot].set(stamp, mode="drop", unique_indices=True),
            seg_version=s.seg_version.at[slot].set(v.T, mode="drop", unique_indices=True),
            n_seg=s.n_seg + n_new,
        )

    def _segments(self, ring, s):
        """Per segment entry: the first live stamp ``[K]``, live steps ``[K]`` and per lane the
        staleness ``[K, L]`` and mass (live steps x weight, 0 outside the window) ``[K, L]``."""
        k = s.seg_start.shape[0]
        j = jnp.arange(k, dtype=jnp.int32)
        newest = (s.n_seg - 1) % k
        end = jnp.where(j == newest, ring.added, jnp.roll(s.seg_start, -1))
        lo = jnp.maximum(s.seg_start, ring.oldest_stamp)
        length = jnp.where(j < s.n_seg, jnp.maximum(end - lo, 0), 0)
        stale = s.version - s.seg_version
        eff = jnp.maximum(stale, 0)
        w = (self.weight or default_weight)(eff)
        w = jnp.asarray(w, jnp.float32)
        w = jnp.where(jnp.isfinite(w) & (w > 0), w, 0.0)
        if self.max_staleness is not None:
            w = jnp.where(eff <= self.max_staleness, w, 0.0)
        return lo, length, stale, length[:, None].astype(jnp.float32) * w

    def sample(self, ring, s, key, batch_size: int):
        lo, length, stale, mass = self._segments(ring, s)
        n_lanes = mass.shape[1]
        bits = jax.random.bits(key, (2, batch_size))
        u = (bits[0] >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)  # uniform in [0, 1)
        pick, ok = _pick(mass.reshape(-1), u)
        seg, lane = pick // n_lanes, pick % n_lanes
        off = _xla.below(bits[1], jnp.maximum(length[seg], 1))
        rank = lo[seg] + off - ring.oldest_stamp
        t = _ring.physical_near(jnp.clip(rank, 0, ring.capacity - 1), ring.cursor, ring.count, ring.capacity)
        t = jnp.where(ok, t, 0).astype(jnp.int32)
        lane = jnp.where(ok, lane, 0)
        lanes = _ring.lane_index(lane, ring.lanes) if ring.lanes else ()
        info = {"mask": jnp.broadcast_to(ok, (batch_size,)),
                "staleness": jnp.where(ok, stale[seg, lane], 0).astype(jnp.int32)}
        return s, (*(i.astype(jnp.int32) for i in lanes), t), info

    def can_sample(self, ring, s, batch_size: int):
        return (ring.count > 0) & (jnp.sum(self._segments(ring, s)[3]) > 0)


def stats(rb, state) -> dict:
    """Eager summary of a buffer state with a :class:`StalenessAwareSampler` (plain buffer):
    ``{"version": current, "staleness": {s: steps stored}, "unreachable": steps whose segment
    left the table}``. For logging and tests."""
    s, ring = state.sampler, state.ring
    lo, length, stale, _ = rb.sampler._segments(ring, s)
    hist: dict = {}
    for ln, st in zip(np.asarray(length), np.asarray(stale)):
        for x in st:
            if ln:
                hist[int(x)] = hist.get(int(x), 0) + int(ln)
    stored = int(np.asarray(ring.count)) * ring.n_lanes
    return {"version": int(np.asarray(s.version)), "staleness": dict(sorted(hist.items())),
            "unreachable": stored - sum(hist.values())}
