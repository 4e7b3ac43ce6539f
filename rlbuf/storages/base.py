"""The storage seam: :class:`Layout` (what a buffer stores) and :class:`Storage` (how), the base
of every storage (``rlbuf.storages.tensor.LazyTensorStorage``, its ``compact_next`` variant
``rlbuf.storages.compact.CompactTensorStorage``, or a user's own).

The interface (``ReplayBuffer`` calls nothing else, so a new storage is a new file):

- ``max_size`` / ``ndim``: transitions held over all lanes / batch dims of ``add`` data;
- ``layout(example) -> Layout``: static description of ``add`` batches like ``example``
  (lanes, time slots per lane, leaf specs). Samplers and writers address time slots of this
  layout; how the storage keeps them in memory is its own business;
- ``init(layout) -> storage``: its arrays (a pytree, kept in ``BufferState.storage``);
- ``check(layout, data) -> T``: validate an ``add`` batch (errors name the key) and return
  its time length;
- ``write(layout, storage, positions, data, skip) -> storage``: put ``data[..., skip:, ...]``
  at time slots ``positions`` (``[t]``: the same in every lane; ``[*lanes, t]``: per lane, only
  from writers without ``"time_order"``; slots ``>= capacity`` are dropped);
- ``gather(layout, storage, index) -> batch``: the items at ``index = (*lane_idx, t)``;
- ``valid(layout, storage, index)``: bool ``[*S]``, False for stored items it cannot return
  (never sampled: ``rlbuf.samplers.base.Sampler.draw``), or ``None``: all can be returned;
- ``breaks(layout, storage, index)``: bool ``[*S]``, True where it knows a stored step does
  not continue into the following slot (``rlbuf.FrameStack``), or ``None``: unknown;
  ``reports_breaks`` says which;
- ``split(n_groups) -> Storage``: the storage each of ``n_groups`` lane groups runs
  (``rlbuf.shard``, ``PerWorkerReplayBuffer``);
- ``requires``: guarantees needed from the writer (``rlbuf.writers.base``), checked by
  ``ReplayBuffer.init``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, TypeVar

import jax
import numpy as np

from rlbuf import _ring, _tree

_S = TypeVar("_S", bound="Storage")  # split returns the same storage class


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static description of a buffer's storage (hashable; kept in the state's treedef).

    ``lanes``: the leading batch dims of the data except time; ``capacity``: time slots per
    lane; ``specs``: ``(key, trailing_shape, dtype_name)`` per leaf; ``treedef``: the data's
    tree structure.
    """

    ndim: int
    lanes: tuple
    capacity: int
    specs: tuple
    treedef: Any

    @property
    def n_lanes(self) -> int:
        return _ring.n_lanes(self.lanes)

    @property
    def size(self) -> int:
        """Total transitions the storage holds when full (``n_lanes * capacity``)."""
        return self.n_lanes * self.capacity

    def spec(self, key) -> tuple:
        key = _tree.as_tuple(key)
        for k, shape, dtype in self.specs:
            if k == key:
                return shape, np.dtype(dtype)
        raise KeyError(f"key {_tree.key_str(key)} is not stored (stored: {self.keys()})")

    def keys(self) -> list:
        return [k for k, _, _ in self.specs]


@dataclasses.dataclass(frozen=True)
class Storage:
    """Base class of storages (the interface is in the module docstring).

    Subclasses implement ``init``, ``write`` and ``gather``; ``layout``, ``check`` and
    ``split`` work for any storage that holds ``max_size`` transitions in lanes of
    ``capacity`` time slots.
    """

    max_size: int
    ndim: int = 1

    #: Writer guarantees the storage needs (``rlbuf.writers.base``), checked by ``ReplayBuffer.init``.
    requires: ClassVar[frozenset] = frozenset()

    def __post_init__(self):
        name = type(self).__name__
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, (int, np.integer)) or self.max_size <= 0:
            raise ValueError(f"{name}: max_size must be a positive int, got {self.max_size!r}")
        if self.ndim not in (1, 2, 3):
            raise ValueError(f"{name}: ndim must be 1, 2 or 3, got {self.ndim!r}")

    @property
    def public_name(self) -> str:
        """The name users build this storage by (in error messages)."""
        return type(self).__name__

    def layout(self, example: Any) -> Layout:
        """Static layout from one example ``add`` batch (arrays or ``ShapeDtypeStruct``s)."""
        items = _tree.leaves_with_keys(example)
        if not items:
            raise ValueError(f"{type(self).__name__}: the example batch has no array leaves")
        treedef = jax.tree_util.tree_structure(example)
        lanes = None
        specs = []
        for key, x in items:
            shape, dtype = _tree.leaf_spec(x, key, type(self).__name__)
            if len(shape) < self.ndim:
                raise ValueError(
                    f"{type(self).__name__}(ndim={self.ndim}): leaf {_tree.key_str(key)} has shape "
                    f"{shape}, fewer than ndim={self.ndim} batch dims "
                    f"(expected [{', '.join(['B'] * (self.ndim - 1) + ['T'])}, ...])"
                )
            leaf_lanes = shape[: self.ndim - 1]
            if lanes is None:
                lanes, first = leaf_lanes, key
            elif leaf_lanes != lanes:
                raise ValueError(
                    f"{type(self).__name__}(ndim={self.ndim}): leaf {_tree.key_str(key)} has lane dims "
                    f"{leaf_lanes} but {_tree.key_str(first)} has {lanes}; all leaves must share "
                    f"the leading {self.ndim - 1} dims"
                )
            specs.append((key, shape[self.ndim :], dtype.name))
        assert lanes is not None  # items is non-empty: the first leaf set it
        if 0 in lanes:
            raise ValueError(
                f"{type(self).__name__}(ndim={self.ndim}): leaf {_tree.key_str(first)} has lane dims {lanes}; "
                "a lane dim of size 0 holds no data"
            )
        n = _ring.n_lanes(lanes)
        capacity = self.max_size // n
        if capacity < 1:
            raise ValueError(
                f"{type(self).__name__}: max_size={self.max_size} is smaller than one time row of "
                f"{n} lanes {lanes}; use max_size >= {n}"
            )
        if capacity > _ring.MAX_STEPS:
            # Time indices are int32; lanes can hold more items in all (gathers index by lane and time).
            raise ValueError(
                f"{type(self).__name__}(ndim={self.ndim}): max_size={self.max_size} over {n} lanes {lanes} is "
                f"{capacity} time steps per lane; a lane holds at most 2**31 - 1 = {_ring.MAX_STEPS} steps "
                "(int32 time index). Spread the data over more lanes (ndim=2, batches [B, T])"
            )
        if capacity * n != self.max_size:
            warnings.warn(
                f"{type(self).__name__}: max_size={self.max_size} is not a multiple of the {n} lanes "
                f"{lanes}; the real capacity is {capacity * n} transitions ({capacity} steps per lane)",
                stacklevel=3,
            )
        return Layout(self.ndim, tuple(lanes), capacity, tuple(specs), treedef)


    def check(self, layout: Layout, data: Any) -> int:
        """Validate an ``add`` batch against the layout; return its time length ``T``.

        Raises ``ValueError``/``TypeError`` naming the offending key at trace time.
        """
        items = _tree.leaves_with_keys(data)
        got = {k for k, _ in items}
        want = set(layout.keys())
        if got != want:
            missing = sorted(map(_tree.key_str, want - got))
            extra = sorted(map(_tree.key_str, got - want))
            raise ValueError(
                "ReplayBuffer.add: the batch's keys differ from the buffer's"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unexpected {', '.join(extra)}" if extra else "")
            )
        t_len = None
        nd = layout.ndim
        for key, x in items:
            shape, dtype = _tree.leaf_spec(x, key, "ReplayBuffer.add")
            want_shape, want_dtype = layout.spec(key)
            if dtype != want_dtype:
                raise TypeError(
                    f"ReplayBuffer.add: key {_tree.key_str(key)} has dtype {dtype.name}, "
                    f"the buffer stores {want_dtype.name}"
                )
            dims = [*map(str, layout.lanes), "T", *map(str, want_shape)]
            expect = f"[{', '.join(dims)}]"
            if len(shape) != nd + len(want_shape) or shape[: nd - 1] != layout.lanes or shape[nd:] != want_shape:
                raise ValueError(
                    f"ReplayBuffer.add: key {_tree.key_str(key)} has shape {shape}, expected "
                    f"{expect} (ndim={nd}: lanes {layout.lanes}, time, then the "
                    f"stored trailing shape {want_shape})"
                )
            if t_len is None:
                t_len, first = shape[nd - 1], key
            elif shape[nd - 1] != t_len:
                raise ValueError(
                    f"ReplayBuffer.add: key {_tree.key_str(key)} has time length {shape[nd - 1]} "
                    f"but {_tree.key_str(first)} has {t_len}"
                )
        assert t_len is not None  # a layout has at least one key (layout() raises otherwise)
        if t_len == 0:
            raise ValueError("ReplayBuffer.add: the batch has time length 0")
        return t_len


    def init(self, layout: Layout) -> Any:
        raise NotImplementedError

    def write(self, layout: Layout, storage: Any, positions, data: Any, skip: int = 0) -> Any:
        raise NotImplementedError

    def gather(self, layout: Layout, storage: Any, index: tuple) -> Any:
        raise NotImplementedError

    def valid(self, layout: Layout, storage: Any, index: tuple):
        """Bool ``[*S]``: False for items the storage cannot return exactly; ``None`` (default)
        when every stored item can be returned. ``ReplayBuffer.sample`` hands it to the
        sampler (``Sampler.draw``), which redraws the draws holding such items, so they are
        never sampled (samplers without replacement mask and zero them instead)."""
        return None

    def breaks(self, layout: Layout, storage: Any, index: tuple):
        """Bool ``[*S]``: True where the stored step at ``index`` is known not to continue into
        the following slot (used by ``rlbuf.FrameStack``); ``None`` (default): unknown, the
        trajectory ids and done/truncated flags decide."""
        return None

    @property
    def reports_breaks(self) -> bool:
        """Whether ``breaks`` returns an array (every break, flagged or not) rather than ``None``."""
        return False

    def split(self: _S, n_groups: int) -> _S:
        """The storage of one of ``n_groups`` lane groups: ``max_size / n_groups`` transitions,
        the other settings unchanged."""
        if self.max_size % n_groups:
            raise ValueError(
                f"{type(self).__name__}: max_size={self.max_size} is not divisible by the {n_groups} groups"
            )
        return dataclasses.replace(self, max_size=self.max_size // n_groups)
