"""``ReplayBuffer``: storage x sampler x writer x transform, as pure functions over a state.

Usage (everything jittable; donate the state to ``add`` and ``sample`` so they update it in
place instead of copying the storage):

    rb = ReplayBuffer(storage=LazyTensorStorage(100_000, ndim=2), batch_size=256)
    state = rb.init(example_batch)                 # example: [B, T, ...] leaves
    add = jax.jit(rb.add, donate_argnums=0)
    sample = jax.jit(rb.sample, donate_argnums=0)
    state = add(state, batch)
    state, batch, info = sample(state, key)

The plug-in seams: the buffer calls only the hooks of ``rlbuf.storages.base.Storage``,
``rlbuf.samplers.base.Sampler`` and ``rlbuf.writers.base.Writer``, and every sampler and
writer hook sees the ring through one read-only view, ``rlbuf._ring.Ring`` (``state.ring``).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _ring, _tree
from rlbuf._eager import compiled_when_eager, is_traced
from rlbuf.buffers.frame_stack import FrameStack
from rlbuf.buffers.stages import Chain, SampleContext, as_stage
from rlbuf.samplers import capabilities
from rlbuf.samplers.base import Sampler, zero_masked
from rlbuf.samplers.random import RandomSampler
from rlbuf.storages.base import Layout, Storage
from rlbuf.writers.base import Writer
from rlbuf.writers.round_robin import RoundRobinWriter


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BufferState:
    """The whole state of a replay buffer (a pytree; ``layout`` is static metadata).

    - ``storage``: the storage's arrays (``LazyTensorStorage``: leaves ``[*lanes, capacity,
      ...]``, lane-major, see ``rlbuf.storages.tensor``; slots never written are zeros).
    - ``cursor``: int32, next physical time slot to write; ``count``: int32, written time
      slots per lane (``<= capacity``); ``added``: int32, time steps ever added per lane.
    - ``sampler`` / ``writer``: the sampler's and writer's own state pytrees.
    - ``layout``: static ``rlbuf.storages.base.Layout`` (lanes, capacity, leaf specs).
    """

    storage: Any
    cursor: jax.Array
    count: jax.Array
    added: jax.Array
    sampler: Any
    writer: Any
    layout: Layout = dataclasses.field(metadata=dict(static=True))

    @property
    def ring(self) -> _ring.Ring:
        """The read-only ring view every sampler and writer hook receives."""
        return _ring.Ring(self.cursor, self.count, self.added, self.layout)

    @property
    def capacity(self) -> int:
        """Transitions the buffer holds when full (``n_lanes * steps per lane``)."""
        return self.layout.size

    def __len__(self) -> int:
        """Stored transitions over all lanes (and over the groups of a sharded or per-worker
        state). Host sync: for use outside ``jit`` only; inside, ``rb.num_stored(state)``."""
        consumed = int(np.asarray(capabilities.consumed_items(self.sampler)))  # consume-once samplers
        return int(np.sum(np.asarray(self.count), dtype=np.int64)) * self.layout.n_lanes - consumed


def count_dtype(size: int):
    """dtype of a count of up to ``size`` transitions that jit can hold exactly, or nearly: int32
    below ``2**31``; above, int64 when ``jax_enable_x64`` is on, else float32 (jax has no wider
    integer without x64; a float32 count is within a relative ``2**-24``, never negative)."""
    if size <= _ring.MAX_FLAT:
        return jnp.int32
    return jnp.int64 if jax.config.read("jax_enable_x64") else jnp.float32


def stored_count(count, layout: Layout) -> jax.Array:
    """``num_stored``: ``sum(count) * n_lanes`` (``count``: ``[]``, or ``[G]`` for ``G``
    groups) in :func:`count_dtype` of the full size (static), so it never wraps."""
    dtype = count_dtype(layout.size * int(np.prod(np.shape(count), dtype=np.int64)))
    return jnp.sum(jnp.asarray(count).astype(dtype)) * jnp.asarray(layout.n_lanes, dtype)


def _select(data: Any, keys: tuple, who: str) -> Any:
    """The nested dict of ``data``'s entries at ``keys`` (each a tuple path)."""
    out: dict = {}
    for k in keys:
        if not _tree.has(data, k):
            raise KeyError(f"{who}: key {_tree.key_str(k)} of keys= is not in the batch")
        out = _tree.set_in(out, k, _tree.get(data, k))
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayBuffer:
    """A replay buffer in TorchRL's decomposition with optax's purity.

    Args:
      storage: a ``rlbuf.storages.base.Storage``, e.g. ``LazyTensorStorage(max_size, ndim)``.
      sampler: ``RandomSampler()`` (default), ``SamplerWithoutReplacement``, slice and
        prioritized samplers, or any ``rlbuf.samplers.base.Sampler``.
      writer: ``RoundRobinWriter()`` (default), ``MaxValueWriter`` or any
        ``rlbuf.writers.base.Writer``.
      batch_size: items per ``sample`` (for slice samplers ``num_slices * slice_len``).
      transform: the sample-time stages (``rlbuf.buffers.stages``) applied to every sampled batch, in
        order: one pure function ``batch -> batch`` (e.g. ``rlbuf.MultiStep``), one stage
        (``check``/``apply`` hooks, e.g. ``rlbuf.FrameStack``), or a tuple of them (or
        ``rlbuf.chain(...)``).
      frame_stack: a ``rlbuf.FrameStack``: single frames stored, each sampled item gets the
        stack of its trajectory's last ``num_frames`` frames (``rlbuf.buffers.frame_stack``); the
        first stage of the chain, before ``transform``.
      keys: store only these keys (strings, tuples for nested keys; a key may name a subtree)
        of what ``add`` (and ``init``'s example) receives; ``None`` stores everything.
      warn_on_empty: a debugging aid, eager calls only: ``sample`` warns (``UserWarning``)
        when the buffer cannot sample a full batch of real data (``can_sample`` False), so
        the batch is padding with ``info["mask"]`` False. Shapes stay static; under ``jit``
        (any traced state) it does nothing: there, gate on ``rb.can_sample(state)``.

    All methods are pure and jittable; the buffer object itself is frozen and hashable, so
    ``jax.jit(rb.add)`` caches on it. Called eagerly (no traced argument), ``add``, ``sample``,
    ``update_priority``, ``can_sample`` and ``num_stored`` run as one compiled program per
    buffer and shapes (``rlbuf._eager``), not primitive by primitive; the state is not
    donated. ``init`` refuses a sampler that needs a guarantee the writer does not give
    (``Sampler.requires`` vs ``Writer.provides``), naming both.
    """

    storage: Storage
    sampler: Sampler = dataclasses.field(default_factory=RandomSampler)
    writer: Writer = dataclasses.field(default_factory=RoundRobinWriter)
    batch_size: int
    transform: Optional[Union[Callable, tuple]] = None
    keys: Optional[tuple] = dataclasses.field(default=None, hash=False)
    frame_stack: Optional[FrameStack] = None
    # (not compared: only eager calls read it, a jitted function is the same either way)
    warn_on_empty: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self):
        # the bases by the paths users import them from
        for name, obj, base, path in (("storage", self.storage, Storage, "rlbuf.storages.Storage"),
                                      ("sampler", self.sampler, Sampler, "rlbuf.samplers.base.Sampler"),
                                      ("writer", self.writer, Writer, "rlbuf.writers.base.Writer")):
            if not isinstance(obj, base):
                raise TypeError(f"ReplayBuffer: {name} must be a {path}, got {type(obj).__name__}")
        if not isinstance(self.batch_size, (int, np.integer)) or isinstance(self.batch_size, bool) \
                or self.batch_size <= 0:
            raise ValueError(f"ReplayBuffer: batch_size must be a positive int, got {self.batch_size!r}")
        if self.frame_stack is not None and not isinstance(self.frame_stack, FrameStack):
            raise TypeError(
                f"ReplayBuffer: frame_stack must be a rlbuf.FrameStack, got {type(self.frame_stack).__name__}"
            )
        if self.keys is not None:
            if isinstance(self.keys, str) or not self._keys:
                raise ValueError(f"ReplayBuffer: keys must be a non-empty sequence of keys, got {self.keys!r}")
        if isinstance(self.transform, list):
            raise TypeError("ReplayBuffer: transform must be a stage or a tuple of stages, got a list "
                            "(the buffer is hashable: pass a tuple)")
        self.stages  # a non-stage raises now

    @property
    def stages(self) -> Chain:
        """The sample-time stages in order (``frame_stack`` first, then ``transform``) as one chain."""
        first = () if self.frame_stack is None else (self.frame_stack,)
        rest = self.transform if isinstance(self.transform, tuple) else \
            (() if self.transform is None else (self.transform,))
        return Chain(tuple(as_stage(s, "ReplayBuffer: transform") for s in first + rest))

    @property
    def _keys(self) -> Optional[tuple]:
        return None if self.keys is None else tuple(_tree.as_tuple(k) for k in self.keys)

    def stored(self, data: Any, who: str = "ReplayBuffer.add") -> Any:
        """``data`` as ``add`` stores it: TorchRL-style tuple keys nested, list leaves made arrays,
        only ``keys`` kept (idempotent)."""
        data = _tree.nest(data, who)
        keys = self._keys
        return data if keys is None else _select(data, keys, who)

    def init(self, example: Any) -> BufferState:
        """An empty buffer shaped for batches like ``example`` (arrays or ShapeDtypeStructs with
        ``ndim`` leading batch dims; the time length of the example does not matter)."""
        layout = self.storage.layout(self.stored(example, "ReplayBuffer.init"))
        # Sampler and storage declare what they need from the writer; one check for both.
        for part, what in ((self.sampler, type(self.sampler).__name__),
                           (self.storage, f"{self.storage.public_name} (as configured)")):
            missing = sorted(part.requires - self.writer.provides)
            if missing:
                raise ValueError(
                    f"ReplayBuffer: {what} needs a writer that provides {missing} "
                    f"(e.g. RoundRobinWriter); {type(self.writer).__name__} provides "
                    f"{sorted(self.writer.provides) or 'none of them'}"
                )
        self.writer.check(layout)
        self.stages.check(layout, self.storage)
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
        return self._add(state, self.stored(data, "ReplayBuffer.add"))

    @compiled_when_eager
    def _add(self, state: BufferState, data: Any) -> BufferState:
        layout = state.layout
        t_len = self.storage.check(layout, data)
        write, wstate, data = self.writer.write(state.ring, state.writer, data)
        storage = self.storage.write(layout, state.storage, write.positions, data, write.skip)
        ring = _ring.Ring(write.new_cursor, write.new_count, state.added + t_len, layout)
        sstate = self.sampler.on_write(ring, state.sampler, write, data)
        return dataclasses.replace(
            state,
            storage=storage,
            cursor=ring.cursor,
            count=ring.count,
            added=ring.added,
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
        padding. Items the storage cannot return exactly (``Storage.valid``, e.g. a
        ``compact_next`` step whose final observation left the table) are never sampled: the
        sampler redraws the items or slices holding one (``Sampler.draw``). When
        ``can_sample`` is False the batch is padding (zeros, never unwritten or stale data)
        with ``info["mask"]`` False.

        Under ``jit``, donate the state (``jax.jit(rb.sample, donate_argnums=0)``): the
        returned state holds the storage, which would otherwise be copied on every call.
        """
        _tree.check_prng_key(key, "ReplayBuffer.sample(state, key)")
        if self.warn_on_empty:
            self._warn_if_empty(state)
        return self._sample(state, key)

    @compiled_when_eager
    def _sample(self, state: BufferState, key: jax.Array):
        ring = state.ring
        # Items the storage cannot return exactly (Storage.valid) are redrawn by the sampler
        # (Sampler.draw); any left after its last round are masked and zeroed.
        valid = functools.partial(self.storage.valid, ring.layout, state.storage)
        sstate, index, info = self.sampler.draw(ring, state.sampler, key, self.batch_size, valid)
        batch = self.storage.gather(ring.layout, state.storage, index)
        ok = valid(index)
        if ok is not None:
            info = dict(info, mask=info["mask"] & ok if "mask" in info else ok)
        if "mask" in info:  # the one place masked items are zeroed (stages keep them zeros)
            batch = zero_masked(batch, info["mask"])
        batch = self.sampler.postprocess(ring, batch, info)
        batch = self.stages.apply(batch, SampleContext(self.storage, state.storage, ring, index, info))
        info = dict(info, index=index if ring.lanes else index[0])
        return dataclasses.replace(state, sampler=sstate), batch, info

    def _warn_if_empty(self, state: BufferState) -> None:
        """``warn_on_empty``: eager states only (a traced one cannot be read without a sync)."""
        if is_traced(state):
            return
        if not bool(self.can_sample(state)):
            warnings.warn(
                f"ReplayBuffer.sample: the buffer cannot sample a full batch of real data ({len(state)} "
                f"transitions stored, batch_size={self.batch_size}, {type(self.sampler).__name__}): the batch "
                "is padding (zeros) where info['mask'] is False; gate sampling on rb.can_sample(state)",
                stacklevel=3,
            )

    @compiled_when_eager
    def can_sample(self, state: BufferState) -> jax.Array:
        """Bool scalar array: whether ``sample`` can return a full batch of real data."""
        return self.sampler.can_sample(state.ring, state.sampler, self.batch_size)

    @compiled_when_eager
    def update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
        """Set the priorities of the items at ``index`` (as in ``info["index"]``).

        ``index`` may also be the ``info`` dict of the ``sample`` itself: then only the items a
        loss learns from are updated, those where ``info["learning_mask"]`` (slices with
        ``burn_in``) or else ``info["mask"]`` is True; burn-in and padding steps keep their
        priorities."""
        if isinstance(index, dict):
            if "index" not in index:
                raise KeyError("ReplayBuffer.update_priority: an info dict needs its 'index' entry (the sample's info)")
            learn = index.get("learning_mask", index.get("mask"))
            index = index["index"] if isinstance(index["index"], tuple) else (index["index"],)
            if learn is not None:  # out of range (-1): ignored by every prioritized sampler
                index = (*index[:-1], jnp.where(learn, index[-1], -1))
        index = index if isinstance(index, tuple) else (index,)
        sstate = self.sampler.update_priority(state.ring, state.sampler, index, priority)
        return dataclasses.replace(state, sampler=sstate)

    @property
    def ndim(self) -> int:
        """Batch dims of ``add`` data (the storage's ``ndim``)."""
        return self.storage.ndim

    def check(self, layout: Layout, data: Any) -> int:
        """Validate the stored part of an ``add`` batch against ``layout`` (errors name the key,
        at trace time); returns its time length."""
        return self.storage.check(layout, self.stored(data))

    def with_batch_size(self, batch_size: int) -> "ReplayBuffer":
        """The same buffer drawing ``batch_size`` items per ``sample``."""
        return self if batch_size == self.batch_size else dataclasses.replace(self, batch_size=batch_size)

    @compiled_when_eager
    def num_stored(self, state: BufferState) -> jax.Array:
        """Scalar: transitions stored over all lanes (jittable; for a sharded or per-worker
        state, over all its groups too). Eagerly, ``len(state)`` is the same number (a Python int).

        Its dtype is fixed by the buffer's size (see :func:`count_dtype`): int32 when the buffer
        holds fewer than ``2**31`` transitions (every buffer of ``2**31`` bytes or less); above,
        int64 with ``jax_enable_x64``, else float32 (within a relative ``2**-24`` of the count).
        Items consumed by a ``consume_after_n_samples`` sampler are not counted.
        """
        n = stored_count(state.count, state.layout)
        return n - capabilities.consumed_items(state.sampler).astype(n.dtype)

    def split(self, n_groups: int, who: str = "ReplayBuffer.split") -> "ReplayBuffer":
        """The buffer each of ``n_groups`` lane groups runs (``rlbuf.shard``,
        ``PerWorkerReplayBuffer``): storage, sampler and writer each split by their own
        ``split``, ``batch_size / n_groups`` items per sample."""
        if self.batch_size % n_groups:
            raise ValueError(f"{who}: batch_size={self.batch_size} is not divisible by the {n_groups} groups")
        try:
            return dataclasses.replace(
                self,
                storage=self.storage.split(n_groups),
                sampler=self.sampler.split(n_groups, ndim=self.storage.ndim, batch_size=self.batch_size),
                writer=self.writer.split(n_groups, ndim=self.storage.ndim),
                batch_size=self.batch_size // n_groups,
            )
        except ValueError as e:
            raise ValueError(f"{who}: {e}") from None
