"""``LazyTensorStorage``: preallocated arrays with an explicit number of batch dims.

Memory layout: lane-major, ``[*lanes, capacity, ...]`` for data ``[*lanes, T, ...]``
(``lanes = ()`` for ``ndim=1``, ``(B,)`` for ``ndim=2``, ``(W, B)`` for ``ndim=3``).

Why lane-major (flashbax's layout) rather than TorchRL's time-major ``[capacity, *lanes]``:
the hot read is a slice of ``slice_len`` consecutive steps of one lane, which is one
contiguous run lane-major but ``slice_len`` strided rows time-major; a write of ``[B, t]``
becomes ``B`` contiguous runs of ``t`` rows, which costs the same bytes. The lane axis
leads, so sharding the buffer over envs/workers (a ``NamedSharding`` on axis 0) splits the
storage into contiguous per-device blocks and every write and read stays device-local.

Variants: a subclass declared with ``class V(LazyTensorStorage, variant="flag")`` is what
``LazyTensorStorage(..., flag=True)`` builds (``compact_next=True``:
``rlbuf.storages.compact.CompactTensorStorage``), so each variant is its own class behind the
``Storage`` seam while the documented constructor keeps working.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from rlbuf.storages.base import Layout, Storage


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
      compact_next: ``True`` builds a ``rlbuf.storages.compact.CompactTensorStorage``: each
        ``("next", k)`` whose ``k`` is stored too is kept only once and rebuilt exactly by
        ``sample`` (needs a time-ordered writer); it also takes ``final_obs_size``, the rows of
        its final-observation table over all lanes (``None``: ``ceil(capacity / 8)`` per lane,
        enough for episodes of 8 steps on average). The state's ``storage`` is then a
        ``rlbuf.storages.compact.CompactState``.
      memory_kind: ``None`` (device memory) or ``"pinned_host"``: the storage's arrays live in
        host memory (JAX memory kinds); ``add`` moves the written batch there, ``sample``
        computes indices on the device and moves only the sampled items back. Works under
        ``jit`` with donation, every sampler, ``FrameStack``, checkpoints and ``compact_next``.
    """

    compact_next: bool = dataclasses.field(default=False, kw_only=True)
    memory_kind: Optional[str] = dataclasses.field(default=None, kw_only=True)

    #: ``{flag: subclass}``: the variants ``__new__`` picks from (``__init_subclass__``).
    _variants: ClassVar[dict] = {}

    def __init_subclass__(cls, variant: Optional[str] = None, **kw):
        super().__init_subclass__(**kw)
        if variant is not None:
            LazyTensorStorage._variants[variant] = cls

    def __new__(cls, *args, **kwargs):
        # LazyTensorStorage(..., compact_next=True) is the documented way to get the variant;
        # Python then runs the variant's own __init__ (it is a subclass) with the same arguments.
        if cls is LazyTensorStorage:
            on = [flag for flag, sub in cls._variants.items() if kwargs.get(flag) is True]
            if len(on) > 1:
                raise ValueError(f"LazyTensorStorage: {' and '.join(on)} cannot be combined")
            if on:
                cls = cls._variants[on[0]]
            else:  # a variant's own option without its flag: say which flag it needs
                own = {f.name for f in dataclasses.fields(cls)}
                for flag, sub in cls._variants.items():
                    extra = sorted((set(kwargs) - own) & {f.name for f in dataclasses.fields(sub)})
                    if extra:
                        raise TypeError(f"LazyTensorStorage: {', '.join(extra)} needs {flag}=True "
                                        f"(an option of {sub.__name__})")
        return super().__new__(cls)

    def __post_init__(self):
        super().__post_init__()
        for flag in self._variants:
            value = getattr(self, flag, False)
            if not isinstance(value, bool):
                raise TypeError(f"LazyTensorStorage: {flag} must be a bool, got {value!r}")
        if self.memory_kind not in (None, "pinned_host"):
            raise ValueError(
                f"LazyTensorStorage: memory_kind must be None or 'pinned_host', got {self.memory_kind!r}"
            )

    @property
    def public_name(self) -> str:
        """``"LazyTensorStorage"`` for every variant (``compact_next=True`` included)."""
        return "LazyTensorStorage"

    def to_storage(self, x):
        """``x`` moved to the storage's memory (a no-op for device storage)."""
        return x if self.memory_kind is None else jax.device_put(x, jax.memory.Space.Host)

    def to_device(self, x):
        """``x`` (read from the storage) moved to device memory (a no-op for device storage)."""
        return x if self.memory_kind is None else jax.device_put(x, jax.memory.Space.Device)

    def init(self, layout: Layout) -> Any:
        """Zero-filled arrays ``[*lanes, capacity, ...]`` (unwritten slots read as zeros)."""
        leaves = [
            self.to_storage(jnp.zeros((*layout.lanes, layout.capacity, *shape), dtype))
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
        ax = layout.ndim - 1
        lead = (slice(None),) * ax
        if positions.ndim > 1:  # each lane its own slots, [*lanes, t] (MaxValueWriter with lanes)
            lead = tuple(self.to_storage(jax.lax.broadcasted_iota(jnp.int32, positions.shape, d)) for d in range(ax))
        positions = self.to_storage(positions)

        def put(buf, x):
            if skip:
                x = jax.lax.slice_in_dim(x, skip, x.shape[ax], axis=ax)
            return buf.at[lead + (positions,)].set(self.to_storage(x), mode="drop", unique_indices=True)

        return jax.tree_util.tree_map(put, storage, data)

    def gather(self, layout: Layout, storage: Any, index: tuple) -> Any:
        """Items at ``index = (*lane_idx, t)`` (int arrays of one shape ``S``): leaves ``[*S, ...]``."""
        # Host storage: the index goes to the host, only the gathered items come back. The index
        # stays (lane, t), never one flat position: lanes * capacity may pass the int32 range.
        index = tuple(self.to_storage(i) for i in index)
        return jax.tree_util.tree_map(lambda x: self.to_device(jnp.asarray(x).at[index].get(mode="clip")), storage)
