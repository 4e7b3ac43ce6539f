"""Storages: the :class:`Storage` interface and ``LazyTensorStorage``, preallocated arrays with
an explicit number of batch dims.

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
- ``split(n_groups) -> Storage``: the storage each of ``n_groups`` lane groups runs
  (``rlbuf.shard``, ``PerWorkerReplayBuffer``).

``LazyTensorStorage``:

Memory layout: lane-major, ``[*lanes, capacity, ...]`` for data ``[*lanes, T, ...]``
(``lanes = ()`` for ``ndim=1``, ``(B,)`` for ``ndim=2``, ``(W, B)`` for ``ndim=3``).

Why lane-major (flashbax's layout) rather than TorchRL's time-major ``[capacity, *lanes]``:
the hot read is a slice of ``slice_len`` consecutive steps of one lane, which is one
contiguous run lane-major but ``slice_len`` strided rows time-major; a write of ``[B, t]``
becomes ``B`` contiguous runs of ``t`` rows, which costs the same bytes. The lane axis
leads, so sharding the buffer over envs/workers (a ``NamedSharding`` on axis 0) splits the
storage into contiguous per-device blocks and every write and read stays device-local.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _ring, _tree, compact


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

    def split(self, n_groups: int) -> "Storage":
        """The storage of one of ``n_groups`` lane groups: ``max_size / n_groups`` transitions,
        the other settings unchanged."""
        if self.max_size % n_groups:
            raise ValueError(
                f"{type(self).__name__}: max_size={self.max_size} is not divisible by the {n_groups} groups"
            )
        return dataclasses.replace(self, max_size=self.max_size // n_groups)


@dataclasses.dataclass(frozen=True)
class LazyTensorStorage(Storage):
    """Preallocated storage of ``max_size`` transitions, allocated on ``init``.

    Args:
      max_size: transitions over all ``ndim`` batch dims. With lanes ``[*lanes]`` the ring
        holds ``capacity = max_size // prod(lanes)`` steps per lane; if that division is not
        exact a warning says so and the real size is ``capacity * prod(lanes)``
        (``state.layout.size``).
      ndim: batch dims of the data given to ``add``: 1 for ``[N, ...]`` (transitions),
        2 for ``[B, T, ...]``, 3 for ``[W, B, T, ...]`` (time last, as collectors emit).
      compact_next: keep each ``("next", k)`` whose ``k`` is stored too only once: ``sample``
        rebuilds it exactly (``rlbuf.compact``; needs a time-ordered writer). The state's
        ``storage`` is then a ``rlbuf.compact.CompactState``.
      final_obs_size: with ``compact_next``, rows of the final-observation table over all
        lanes (``None``: ``ceil(capacity / 8)`` per lane, enough for episodes of 8 steps on
        average; items that lose their row are never sampled and are counted in ``storage.lost``).
      memory_kind: ``None`` (device memory) or ``"pinned_host"``: the storage's arrays live in
        host memory (JAX memory kinds); ``add`` moves the written batch there, ``sample``
        computes indices on the device and moves only the sampled items back. Works under
        ``jit`` with donation, every sampler, ``FrameStack``, checkpoints and ``compact_next``
        (its frames and table rows in host memory, its bookkeeping on the device; each
        ``add`` brings back only the head row it compares with the new batch).
    """

    compact_next: bool = dataclasses.field(default=False, kw_only=True)
    final_obs_size: Optional[int] = dataclasses.field(default=None, kw_only=True)
    memory_kind: Optional[str] = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.compact_next, bool):
            raise TypeError(f"LazyTensorStorage: compact_next must be a bool, got {self.compact_next!r}")
        fs = self.final_obs_size
        if fs is not None and (isinstance(fs, bool) or not isinstance(fs, (int, np.integer)) or fs <= 0):
            raise ValueError(f"LazyTensorStorage: final_obs_size must be a positive int or None, got {fs!r}")
        if self.memory_kind not in (None, "pinned_host"):
            raise ValueError(
                f"LazyTensorStorage: memory_kind must be None or 'pinned_host', got {self.memory_kind!r}"
            )

    def _host(self, x):
        """``x`` moved to the storage's memory (a no-op for device storage)."""
        return x if self.memory_kind is None else jax.device_put(x, jax.memory.Space.Host)

    def _device(self, x):
        return x if self.memory_kind is None else jax.device_put(x, jax.memory.Space.Device)

    @property
    def requires(self) -> frozenset:  # type: ignore[override]
        return frozenset({"time_order"}) if self.compact_next else frozenset()

    def split(self, n_groups: int) -> "Storage":
        out = super().split(n_groups)
        if self.final_obs_size is not None:
            out = dataclasses.replace(out, final_obs_size=-(-self.final_obs_size // n_groups))
        return out

    def valid(self, layout: Layout, storage: Any, index: tuple):
        if self.compact_next:
            return compact.valid(self, layout, storage, index)
        return None

    @property
    def reports_breaks(self) -> bool:  # type: ignore[override]
        return self.compact_next

    def breaks(self, layout: Layout, storage: Any, index: tuple):
        if self.compact_next:
            return compact.breaks(self, layout, storage, index)
        return None

    def init(self, layout: Layout) -> Any:
        """Zero-filled arrays ``[*lanes, capacity, ...]`` (unwritten slots read as zeros)."""
        if self.compact_next:
            return compact.init(self, layout)
        leaves = [
            self._host(jnp.zeros((*layout.lanes, layout.capacity, *shape), dtype))
            for _, shape, dtype in layout.specs
        ]
        return jax.tree_util.tree_unflatten(layout.treedef, leaves)


    def write(self, layout: Layout, storage: Any, positions, data: Any, skip: int = 0) -> Any:
        """Scatter ``data[..., skip:, ...]`` (time axis ``ndim - 1``) into time slots ``positions``
        (``[t]``, the same in every lane, or ``[*lanes, t]``, per lane).

        Positions ``>= capacity`` are dropped (negative ones would wrap), which writers use to
        discard items.
        In place when the storage is donated.
        """
        if self.compact_next:
            return compact.write(self, layout, storage, positions, data, skip)
        ax = layout.ndim - 1
        lead = (slice(None),) * ax
        if positions.ndim > 1:  # each lane its own slots, [*lanes, t] (MaxValueWriter with lanes)
            lead = tuple(self._host(jax.lax.broadcasted_iota(jnp.int32, positions.shape, d)) for d in range(ax))
        positions = self._host(positions)

        def put(buf, x):
            if skip:
                x = jax.lax.slice_in_dim(x, skip, x.shape[ax], axis=ax)
            return buf.at[lead + (positions,)].set(self._host(x), mode="drop", unique_indices=True)

        return jax.tree_util.tree_map(put, storage, data)


    def gather(self, layout: Layout, storage: Any, index: tuple) -> Any:
        """Items at ``index = (*lane_idx, t)`` (int arrays of one shape ``S``): leaves ``[*S, ...]``."""
        if self.compact_next:
            return compact.gather(self, layout, storage, index)
        # Host storage: the index goes to the host, only the gathered items come back. The index
        # stays (lane, t), never one flat position: lanes * capacity may pass the int32 range.
        index = tuple(self._host(i) for i in index)
        return jax.tree_util.tree_map(lambda x: self._device(x.at[index].get(mode="clip")), storage)
