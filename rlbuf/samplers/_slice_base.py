"""What every trajectory-aware slice sampler shares: the state (``SliceState``), the static
configuration checks, and ``_SliceBase`` (key resolution, boundary bookkeeping at ``add`` time
through ``rlbuf.samplers._trajectories``, the slice-index builder, burn-in, ``span`` and the
``is_init`` rule). ``SliceSampler`` (``slice.py``), ``SliceSamplerWithoutReplacement``
(``slice_without_replacement.py``) and ``PrioritizedSliceSampler`` build on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from rlbuf import _fields, _ring, _tree, _xla
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers.base import Sampler
from rlbuf.writers.base import TIME_ORDER


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SliceState:
    """State of :class:`SliceSampler` (inside ``BufferState.sampler``).

    - ``traj``: the boundary bookkeeping (``_trajectories.TrajectoryState``).
    - ``queue``: ``[L, capacity, 2]`` int32, per lane a ring of entries of the trajectories that
      reached ``thr`` steps, in time order (entry ``k`` at :meth:`SliceState.entry_slot`): ``(start, end)``, the
      stamp of the trajectory's first step (possibly no longer stored; the stored part begins at
      ``max(start, oldest)``) and one past its newest step (the ongoing trajectory's end is
      refreshed by every ``add``). Why not the trajectory number: a sample then reads one queue
      entry and the data, instead of queue -> trajectory record -> data (each a cache miss at
      large capacities).
    - ``queued``: ``[L]`` int32, entries ever appended per lane (wraps after 2**31).
    - ``qhead``: ``[L]`` int32 in ``[0, capacity)``, the slot of entry ``queued`` (the next one):
      entry ``k`` is at ``(qhead + (k - queued)) mod capacity``, exact across the int32 wrap
      whatever the capacity (``k % capacity`` is not: see ``_trajectories.record_slot``).
    - ``qlen``: ``[L]`` int32 in ``[0, capacity]``, how many of the newest entries are of
      stored trajectories (entries ``queued - qlen .. queued - 1``; the first may have shrunk
      below ``thr``). Kept by every ``add`` of ``T`` steps: plus its new entries, minus the
      oldest entries whose trajectory it overwrote entirely (at most ``T``; their ends increase
      along the queue and were past the oldest stored stamp one add ago, so no stamp difference
      wraps), O(L × T). Why not a per-trajectory queue rank (``[L, capacity]``, O(1) to read at
      the first stored trajectory's record): one more ``[L, capacity]`` scatter per add, as
      costly as a data leaf's.
    - ``thr``: ``[]`` int32, the length the queue is kept for (0: none yet).
    - ``want``: ``[]`` int32, the ``slice_len`` of the last ``sample``; the next ``add``
      rebuilds the queue for it (once, O(L × capacity)) if it differs from ``thr``.
    """

    #: Every leaf is per lane (``[L, ...]``) or a scalar: ``rlbuf.regroup`` moves lanes between groups.
    lane_major: ClassVar[bool] = True

    traj: trj.TrajectoryState
    queue: jax.Array
    queued: jax.Array
    qlen: jax.Array
    thr: jax.Array
    want: jax.Array
    qhead: jax.Array

    def entry_slot(self, lane, k):
        """Slot in ``[0, capacity)`` of queue entry number ``k`` of flat lane ``lane``."""
        return (self.qhead[lane] + (k - self.queued[lane])) % self.queue.shape[1]


def _span_pair(span):
    """TorchRL's ``span``: a bool or int for both sides, or a ``(left, right)`` pair."""
    pair = tuple(span) if isinstance(span, (tuple, list)) else (span, span)
    if len(pair) != 2 or not all(isinstance(x, bool) or isinstance(x, int) and x >= 0 for x in pair):
        raise ValueError(f"span must be a bool, a non-negative int or a (left, right) pair of them, got {span!r}")
    return tuple(x if isinstance(x, bool) else int(x) for x in pair)


def check_slice_config(sampler) -> None:
    """Validate the slice fields of ``sampler`` (``num_slices``, ``slice_len``, ``end_key`` /
    ``end_keys``; which boundary key is used is resolved against the stored keys by
    ``rlbuf.samplers._trajectories.key_spec``; the keys are normalised to tuples and the alias
    ``trajectory_key`` folded into ``traj_key`` at construction, see ``rlbuf._fields``)."""
    self = sampler
    name = type(self).__name__
    if self.consume_after_n_samples is not None:
        # TorchRL refuses it too: consumed steps would leave holes inside stored trajectories.
        raise ValueError(
            f"{name}: consume_after_n_samples is not supported by slice samplers (consumed steps would cut "
            "the stored trajectories); use RandomSampler or SamplerWithoutReplacement"
        )
    if (self.num_slices is None) == (self.slice_len is None):
        raise ValueError(
            f"{name}: give exactly one of num_slices or slice_len "
            f"(got num_slices={self.num_slices!r}, slice_len={self.slice_len!r})"
        )
    for field in ("num_slices", "slice_len"):
        v = getattr(self, field)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{name}: {field} must be a positive int, got {v!r}")
    b = self.burn_in
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        raise ValueError(f"{name}: burn_in must be a non-negative int, got {b!r}")
    if self.end_key is not None and self.end_keys is not None:
        raise ValueError(
            f"{name}: end_key and end_keys are exclusive (one boundary flag, or several OR-ed), "
            f"got end_key={self.end_key!r}, end_keys={self.end_keys!r}"
        )
    if self.end_keys is not None and not self.end_keys:
        raise ValueError(f"{name}: end_keys must name at least one key")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SliceBase(Sampler):
    """The fields, checks and shared pieces of every slice sampler (keyword-only fields)."""

    num_slices: Optional[int] = None
    slice_len: Optional[int] = None
    traj_key: Any = _fields.key()
    end_key: Any = _fields.key()
    end_keys: Any = _fields.keys()
    truncated_key: Any = _fields.key(("next", "truncated"))
    init_key: Any = _fields.key("is_init")
    span: Any = _fields.Converted((False, False), _span_pair)
    strict_length: bool = True
    burn_in: int = 0
    trajectory_key: Any = _fields.key(alias_of="traj_key")
    #: Refused (accepted as a keyword only to say so clearly): see ``check_slice_config``.
    consume_after_n_samples: Optional[int] = None

    # Padding (strict_length=False, empty buffer) is zeroed by ``ReplayBuffer.sample``.
    pads = True
    # The boundary bookkeeping assumes each add fills the next slots in time.
    requires = frozenset({TIME_ORDER})

    def __post_init__(self):
        check_slice_config(self)

    def split(self, n_groups: int, *, ndim: int, batch_size: int):
        """Each group draws ``num_slices / n_groups`` slices of the same length from its lanes."""
        name = type(self).__name__
        if ndim == 1:
            raise ValueError(
                f"{name} needs lanes (LazyTensorStorage ndim >= 2): with ndim=1 the groups split the "
                "time axis of every batch and trajectories would be cut"
            )
        n_slices, _ = self.shape(batch_size)
        if n_slices % n_groups:
            raise ValueError(f"{name}: num_slices={n_slices} is not divisible by the {n_groups} groups")
        return self if self.num_slices is None else dataclasses.replace(self, num_slices=n_slices // n_groups)

    # --- static configuration -------------------------------------------------------------

    def shape(self, batch_size: int) -> tuple[int, int]:
        """``(num_slices, slice_len)`` for a buffer ``batch_size`` (raises if not divisible)."""
        name = type(self).__name__
        if self.num_slices is not None:
            given, what = self.num_slices, "num_slices"
        else:
            assert self.slice_len is not None  # __post_init__: exactly one of the two is set
            given, what = self.slice_len, "slice_len"
        if batch_size % given:
            raise ValueError(f"{name}: batch_size={batch_size} is not divisible by {what}={given}")
        other = batch_size // given
        return (given, other) if self.num_slices is not None else (other, given)

    def _spec(self, layout) -> trj.KeySpec:
        return trj.key_spec(layout, self.traj_key, self.end_key, owner=type(self).__name__, end_keys=self.end_keys)

    def check(self, layout, batch_size: int) -> None:
        # Trajectory bookkeeping and the slow draw number items by one int32 flat position.
        _ring.check_flat(layout.lanes, layout.capacity, type(self).__name__)
        n_slices, n = self.shape(batch_size)
        for side, x in zip(("left", "right"), self.span):
            if not isinstance(x, bool) and x >= n:
                raise ValueError(
                    f"{type(self).__name__}: span {side}={x} must be smaller than slice_len={n} (TorchRL's rule)"
                )
        if n > layout.capacity:
            raise ValueError(
                f"{type(self).__name__}: slice_len={n} is larger than the {layout.capacity} time steps "
                f"each lane of the storage holds"
            )
        self._spec(layout)

    # --- shared pieces ----------------------------------------------------------------------

    def _start_range(self, length, n: int):
        """First and last start offsets (``[S]``) a slice of ``n`` steps may take in a trajectory of
        ``length`` stored steps. Without ``span``: ``[0, length - n]`` (a shorter trajectory,
        with ``strict_length=False``, only ``0``). ``span=(left, right)`` (TorchRL's): ``left``
        True lets a slice start up to ``n - 1`` steps before the trajectory (an int ``k``: up to
        ``k``); ``right`` True lets it start up to the last step (an int ``k``: run ``k`` steps
        past the end). A slice then holds at least one step (``n - k`` with an int)."""
        left, right = self.span
        lo = -(n - 1 if left is True else int(left))
        hi = length - 1 if right is True else length - n + int(right)
        return lo, jnp.maximum(hi, lo)

    def _slices(self, ring, ranges, bits, lane, begin, end, ok, n: int):
        """Index/mask of one slice per trajectory of lane ``lane`` with stored stamps ``[begin,
        end)`` (``[S]`` each; ``ok`` False gives an all-padding slice): a start uniform over
        :meth:`_start_range` (from the uint32 ``bits``), whole (padded) trajectory if shorter
        than ``n``. The real steps of a slice come first, padding (``mask`` False) after them,
        also for a slice that starts before its trajectory (``span``)."""
        length = jnp.where(ok, end - begin, 0)
        lo, hi = self._start_range(length, n)
        off = lo + _xla.below(bits, hi - lo + 1)
        first = jnp.maximum(off, 0)
        real = jnp.minimum(off + n, length) - first
        return self._sequence(ring, lane, begin + first - ranges.oldest, first, ok, real, n)

    def _sequence(self, ring, lane, rank0, before, ok, real, n: int):
        """``(index, info)`` of the ``[S, burn_in + n]`` sequences whose learning steps start at
        age rank ``rank0`` (``[S]``), the first ``real`` (``[S]``) of their ``n`` real (the rest
        padding), ``before`` (``[S]``) stored steps of the same trajectory preceding them. The
        burn-in steps are the ``min(before, burn_in)`` steps just before the learning start; the
        missing ones are padding at the front (the trajectory starts later, or was overwritten).
        ``info``: ``"mask"`` (real steps) and ``"learning_mask"`` (the real learning steps),
        ``[S, b + n]``. Burn-in steps are real stored steps of the trajectory, so a sequence
        never crosses a trajectory, the write head or an unwritten slot when its learning part
        does not. Masks come from one iota (no concatenation: fewer XLA ops per sample)."""
        b = self.burn_in
        k = jnp.arange(b + n, dtype=jnp.int32)[None, :]
        learn = (k >= b) & (k < b + real[:, None])
        if b == 0:
            mask = learn
        else:
            pad = b - jnp.minimum(jnp.where(ok, before, 0), b)
            mask = learn | ((k >= pad[:, None]) & (k < b) & ok[:, None])
        index = self._slice_index(ring, lane, rank0, ok, mask, shift=b)
        # With burn-in, computed once into buffers: XLA:CPU would otherwise fuse the whole draw ->
        # index -> mask arithmetic into the gather of every stored leaf and into every use of the
        # masks (the burn-in mask's extra terms made sampling 1.2-1.3x plain slices of burn_in + n
        # steps). Without burn-in the recomputation is cheaper than the loop that materializes
        # (slice loop at 1M, one core: sample 28.5 -> 22.0 µs with 4 leaves, 59.6 -> 56.5 with 10).
        if b:
            index, mask, learn = _xla.materialize((index, mask, learn))
        return index, {"mask": mask, "learning_mask": learn}

    @staticmethod
    def _slice_index(ring, lane, rank0, ok, mask, shift: int = 0):
        """The one slice-index builder: ``(*lane_idx, t)``, ``[S, n]`` int32 each, of slices of
        flat lanes ``lane`` whose step ``k`` is at age rank ``rank0 + k - shift`` (``rank0``:
        ``[S]``; ``shift``: the burn-in length). Padding (``mask`` False) points at rank
        ``rank0`` (the first learning step) and an all-padding slice (``ok`` False) at slot 0:
        always a real storage location, zeroed by ``ReplayBuffer.sample``. Slices never cross the write
        head, so ``0 <= rank0 + k - shift < count <= capacity`` (:func:`rlbuf._ring.physical_near`)."""
        steps = jnp.arange(mask.shape[1], dtype=jnp.int32) - shift
        rank = jnp.where(ok, rank0, 0)[:, None] + jnp.where(mask, steps[None, :], 0)
        t = _ring.physical_near(rank, ring.cursor, ring.count, ring.capacity).astype(jnp.int32)
        t = jnp.where(ok[:, None], t, 0)
        lane_idx = _ring.lane_index(lane, ring.lanes) if ring.lanes else ()
        return (*(jnp.broadcast_to(li[:, None], t.shape).astype(jnp.int32) for li in lane_idx), t)

    def postprocess(self, ring, batch, info):
        """Padding arrives zeroed (``ReplayBuffer.sample``); set ``truncated_key`` (and its sibling
        ``"done"``, if stored) True at each
        slice's last real step, and ``init_key`` (``"is_init"``, OR-ed with the stored flags) True
        at each slice's first real step, like TorchRL (only keys the buffer stores): a recurrent
        module then restarts from the stored state at every slice start (with ``burn_in``, at
        the first burn-in step). ``init_key=None`` / ``truncated_key=None`` leave those keys as
        stored."""
        mask = info["mask"]
        stored = set(ring.layout.keys())
        flags = []
        if self.truncated_key is not None:
            nxt = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
            last = mask & ~nxt
            flags += [(self.truncated_key, last, "set"), (self.truncated_key[:-1] + ("done",), last, "or")]
        if self.init_key is not None:
            prev = jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
            flags.append((self.init_key, mask & ~prev, "or"))
        for k, mark, op in flags:
            if k not in stored:
                continue
            x = _tree.get(batch, k)
            flag = mark.reshape(mark.shape + (1,) * (x.ndim - 2))
            flag = jnp.broadcast_to(flag, x.shape)
            if op == "or":
                flag = flag | (x != 0)
            batch = _tree.set_in(batch, k, flag.astype(x.dtype))
        return batch

    def _bounds_all(self, ring, ts, ranges):
        """``[L, capacity]`` each: stored ``[begin, end)`` stamps of the lane's ``j``-th stored
        trajectory, its stored length (0 past the last) and its number; O(L × capacity)."""
        j = jnp.arange(ring.capacity, dtype=jnp.int32)[None, :]
        seq = ranges.first[:, None] + j
        lane = jnp.broadcast_to(jnp.arange(ring.n_lanes, dtype=jnp.int32)[:, None], seq.shape)
        begin, end = trj.bounds(ring, ts, ranges, lane, seq)
        return begin, end, jnp.where(j < ranges.n_stored[:, None], end - begin, 0), seq

    def _lengths_all(self, ring, ts, ranges):
        """``[L, capacity]`` stored length of the lane's ``j``-th stored trajectory (0 past the
        last) and the trajectory numbers; O(L × capacity)."""
        return self._bounds_all(ring, ts, ranges)[2:]
