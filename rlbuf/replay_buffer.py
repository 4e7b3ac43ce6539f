"""``ReplayBuffer``: storage x sampler x writer x transform, as pure functions over a state.

Usage (everything jittable; donate the state to ``add`` so it updates in place)::

    rb = ReplayBuffer(storage=LazyTensorStorage(100_000, ndim=2), batch_size=256)
    state = rb.init(example_batch)                 # example: [B, T, ...] leaves
    add = jax.jit(rb.add, donate_argnums=0)
    state = add(state, batch)
    state, sample, info = jax.jit(rb.sample)(state, key)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from rlbuf import _tree
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.storage import Layout, LazyTensorStorage
from rlbuf.writers import RoundRobinWriter


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BufferState:
    """The whole state of a replay buffer (a pytree; ``layout`` is static metadata).

    - ``storage``: the data, leaves ``[*lanes, capacity, ...]`` (lane-major, see
      ``rlbuf.storage``); slots never written are zeros.
    - ``cursor``: int32, next physical time slot to write; ``count``: int32, written time
      slots per lane (``<= capacity``); ``added``: int32, time steps ever added per lane.
    - ``sampler`` / ``writer``: the sampler's and writer's own state pytrees.
    - ``layout``: static ``rlbuf.storage.Layout`` (lanes, capacity, leaf specs).
    """

    storage: Any
    cursor: jax.Array
    count: jax.Array
    added: jax.Array
    sampler: Any
    writer: Any
    layout: Layout = dataclasses.field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        """Transitions the buffer holds when full (``n_lanes * steps per lane``)."""
        return self.layout.size

    def __len__(self) -> int:
        """Stored transitions (host sync: for use outside ``jit`` only)."""
        return int(self.count) * self.layout.n_lanes


@dataclasses.dataclass(frozen=True)
class ReplayBuffer:
    """A replay buffer in TorchRL's decomposition with optax's purity.

    Args:
      storage: e.g. ``LazyTensorStorage(max_size, ndim)``.
      sampler: ``RandomSampler()`` (default), ``SamplerWithoutReplacement``, slice and
        prioritized samplers.
      writer: ``RoundRobinWriter()`` (default) or ``MaxValueWriter``.
      batch_size: items per ``sample`` (for slice samplers ``num_slices * slice_len``).
      transform: optional pure function applied to every sampled batch.

    All methods are pure and jittable; the buffer object itself is frozen and hashable, so
    ``jax.jit(rb.add)`` caches on it.
    """

    storage: LazyTensorStorage
    sampler: Sampler = dataclasses.field(default_factory=RandomSampler)
    writer: Any = dataclasses.field(default_factory=RoundRobinWriter)
    batch_size: int = None  # type: ignore[assignment]
    transform: Optional[Callable] = None

    def __post_init__(self):
        if not isinstance(self.storage, LazyTensorStorage):
            raise TypeError(f"ReplayBuffer: storage must be a LazyTensorStorage, got {type(self.storage).__name__}")
        if not isinstance(self.batch_size, (int,)) or isinstance(self.batch_size, bool) or self.batch_size <= 0:
            raise ValueError(f"ReplayBuffer: batch_size must be a positive int, got {self.batch_size!r}")

    def init(self, example: Any) -> BufferState:
        """An empty buffer shaped for batches like ``example`` (arrays or ShapeDtypeStructs with
        ``ndim`` leading batch dims; the time length of the example does not matter)."""
        example = _tree.nest(example, "ReplayBuffer.init")  # TorchRL-style tuple keys, list leaves
        layout = self.storage.layout(example)
        self.sampler.check(layout, self.batch_size)
        # Distinct arrays: one buffer donated twice would be an error.
        z = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
        return BufferState(
            storage=self.storage.init(layout),
            cursor=z(),
            count=z(),
            added=z(),
            sampler=self.sampler.init(layout),
            writer=self.writer.init(layout),
            layout=layout,
        )

    def add(self, state: BufferState, data: Any) -> BufferState:
        """Write ``data`` (leaves ``[*lanes, T, ...]``, any ``T``) at the cursor; returns the new
        state. Wrong keys, dtypes or shapes raise at trace time naming the key."""
        layout = state.layout
        data = _tree.nest(data, "ReplayBuffer.add")  # TorchRL-style tuple keys, list leaves
        t_len = self.storage.check(layout, data)
        write, wstate, data = self.writer.write(layout, state, data)
        storage = self.storage.write(layout, state.storage, write.positions, data, write.skip)
        sstate = self.sampler.on_write(layout, state.sampler, write, data)
        return dataclasses.replace(
            state,
            storage=storage,
            cursor=write.new_cursor,
            count=write.new_count,
            added=state.added + t_len,
            sampler=sstate,
            writer=wstate,
        )

    extend = add

    def sample(self, state: BufferState, key: jax.Array):
        """Draw a batch: returns ``(state, batch, info)``.

        ``batch`` leaves are ``[batch_size, ...]`` (slice samplers: ``[num_slices, slice_len,
        ...]``); ``info["index"]`` locates each item in storage such that
        ``state.storage[k][info["index"]]`` is ``batch[k]`` before ``transform``: an int array
        for ``ndim=1``, a tuple ``(*lane_idx, t)`` otherwise. ``info["mask"]`` is False for
        padding. When ``can_sample`` is False the batch is padding (zeros, never unwritten or
        stale data) with ``info["mask"]`` False.
        """
        _tree.check_prng_key(key, "ReplayBuffer.sample(state, key)")
        layout = state.layout
        sstate, index, info = self.sampler.sample(layout, state, key, self.batch_size)
        batch = self.storage.gather(layout, state.storage, index)
        batch = self.sampler.postprocess(layout, batch, info)
        if self.transform is not None:
            batch = self.transform(batch)
        info = dict(info, index=index if layout.lanes else index[0])
        return dataclasses.replace(state, sampler=sstate), batch, info

    def can_sample(self, state: BufferState) -> jax.Array:
        """Bool scalar array: whether ``sample`` can return a full batch of real data."""
        return self.sampler.can_sample(state.layout, state, self.batch_size)

    def update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
        """Set the priorities of the items at ``index`` (as in ``info["index"]``)."""
        index = index if isinstance(index, tuple) else (index,)
        sstate = self.sampler.update_priority(state.layout, state.sampler, index, priority)
        return dataclasses.replace(state, sampler=sstate)
