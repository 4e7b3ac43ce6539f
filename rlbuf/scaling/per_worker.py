"""``PerWorkerReplayBuffer``: one replay buffer per collector worker, stacked on a leading worker
axis (the asynchronous collector's buffer). Its sampling distribution is described in
:mod:`rlbuf.scaling.sharding` (each worker contributes the same number of items to each batch), or,
with ``proportional=True``, each item comes from a worker chosen in proportion to what the
worker holds."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _tree, _xla
from rlbuf._eager import compiled_when_eager
from rlbuf.buffers.protocols import SplittableBuffer
from rlbuf.buffers.replay_buffer import BufferState
from rlbuf.scaling._groups import _check_groups, _ignore_foreign, _rank1, _split_buffer, _stored


@dataclasses.dataclass(frozen=True)
class PerWorkerReplayBuffer:
    """One :class:`ReplayBuffer` per collector worker, stacked on a leading worker axis, so that
    each worker's batches go into its own lanes and rings (slices stay valid however the
    workers' batches interleave; see :class:`rlbuf.collectors.async_.MultiAsyncCollector`).

    ``buffer`` is configured for one worker's batches (e.g. ``LazyTensorStorage(ndim=2)`` for
    ``[B, T]``) with ``max_size`` and ``batch_size`` counted over all ``num_workers`` workers.

    State: a :class:`BufferState` whose leaves carry a leading ``[W]`` axis (storage ``[W,
    *lanes, capacity, ...]``, cursor/count ``[W]``, ...); ``state.layout`` is one worker's.

    - ``add_worker(state, worker_id, batch)``: writes one worker's batch (``worker_id`` may be
      a traced int) into that worker's sub-buffer only; its cursor alone advances.
    - ``add(state, batch)``: all workers at once, ``batch`` leaves ``[W, *lanes, T, ...]``.
    - ``sample(state, key)``: ``batch_size / W`` items from each worker (key
      ``fold_in(key, w)``), concatenated worker-major; ``info["index"]`` is
      ``(worker, *lane_idx, t)``, an index into ``state.storage``.
    - ``update_priority(state, info["index"], priority)``: same layout as ``sample`` returned.
    - ``can_sample(state)``: every worker's sub-buffer can sample (``proportional``: any).
    - ``info["worker_fill"]``: int32 ``[W]``, the transitions each worker holds.

    Sampling distribution: see :mod:`rlbuf.scaling.sharding` (each worker contributes equally), unless
    ``proportional=True``: then each item (each slice, for slice samplers) independently comes
    from worker ``w`` with probability ``fill_w / sum_v fill_v`` (``fill``: stored
    transitions, 0 for a worker that cannot sample yet), and within the worker from its
    sampler's own distribution; for ``RandomSampler`` that is exactly uniform over every
    stored item however unevenly the workers were fed (a worker that delivered its first
    batches late is not over-sampled). The batch keeps the shapes of ``sample`` (items in
    batch order, not worker-major; ``info["index"]`` still ``(worker, *lane_idx, t)``). It
    needs a sampler with independent draws (``Sampler.redraws``: not the without-replacement
    samplers) and costs ``W`` times the sampling work (every worker draws a full batch of
    candidates, of which each position keeps one worker's).
    """

    buffer: SplittableBuffer
    num_workers: int
    proportional: bool = False

    def __post_init__(self):
        if not isinstance(self.num_workers, (int, np.integer)) or self.num_workers <= 0:
            raise ValueError(f"PerWorkerReplayBuffer: num_workers must be a positive int, got {self.num_workers!r}")
        self._local  # split now: a buffer that cannot be split raises here
        if self.proportional and not self._local.sampler.redraws:
            raise ValueError(
                f"PerWorkerReplayBuffer: proportional=True needs a sampler with independent draws; "
                f"{type(self.buffer.sampler).__name__} (as configured) draws without replacement"
            )

    @functools.cached_property
    def _local(self) -> SplittableBuffer:
        return _split_buffer(self.buffer, int(self.num_workers), "PerWorkerReplayBuffer")

    @property
    def local_buffer(self) -> SplittableBuffer:
        """The plain buffer each worker runs (``max_size / W``, ``batch_size / W``)."""
        return self._local

    @property
    def batch_size(self) -> int:
        """Items per ``sample`` over all workers (the wrapped buffer's)."""
        return self.buffer.batch_size
    def _check(self, state: BufferState, method: str) -> None:
        n = int(self.num_workers)
        _check_groups(state, n, f"PerWorkerReplayBuffer.{method}", f"the buffer has {n} workers")

    @compiled_when_eager
    def num_stored(self, state: BufferState) -> jax.Array:
        """Scalar: transitions stored over all workers (jittable; dtype as for
        ``ReplayBuffer.num_stored``: int32 below ``2**31``)."""
        self._check(state, "num_stored")
        return self._local.num_stored(state)

    def init(self, example: Any) -> BufferState:
        """Empty sub-buffers for worker batches like ``example`` (one worker's batch)."""
        example = _tree.nest(example, "PerWorkerReplayBuffer.init")
        states = [self._local.init(example) for _ in range(self.num_workers)]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

    @compiled_when_eager
    def add_worker(self, state: BufferState, worker_id, batch: Any) -> BufferState:
        """Write one worker's ``batch`` into its sub-buffer (``worker_id``: int or int scalar)."""
        self._check(state, "add_worker")
        w = jnp.asarray(worker_id, jnp.int32)
        sub = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, w, keepdims=False), state)
        sub = self._local.add(sub, batch)
        return jax.tree_util.tree_map(lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y, w, 0), state, sub)

    def add(self, state: BufferState, batch: Any) -> BufferState:
        """Write a batch of every worker (leaves ``[W, *lanes, T, ...]``)."""
        self._check(state, "add")
        batch = _stored(self.buffer, batch, "PerWorkerReplayBuffer.add")
        for key, x in _tree.leaves_with_keys(batch):
            if not np.shape(x) or np.shape(x)[0] != self.num_workers:
                raise ValueError(
                    f"PerWorkerReplayBuffer.add: key {_tree.key_str(key)} has shape {np.shape(x)}, "
                    f"expected a leading worker axis of {self.num_workers}"
                )
        return self._add(state, batch)

    @compiled_when_eager
    def _add(self, state: BufferState, batch: Any) -> BufferState:
        return jax.vmap(self._local.add)(state, batch)

    extend = add

    @compiled_when_eager
    def worker_fill(self, state: BufferState) -> jax.Array:
        """int32 ``[W]``: transitions each worker holds (jittable)."""
        return jax.vmap(self._local.num_stored)(state).astype(jnp.int32)

    @compiled_when_eager
    def sample(self, state: BufferState, key: jax.Array):
        """``(state, batch, info)``: ``batch_size / W`` items per worker, worker-major; with
        ``proportional``, each item from a worker drawn by its fill (see the class docstring)."""
        self._check(state, "sample")
        if self.proportional:
            return self._sample_proportional(state, key)
        W = self.num_workers

        def one(st, w):
            st, batch, info = self._local.sample(st, jax.random.fold_in(key, w))
            idx = info["index"] if isinstance(info["index"], tuple) else (info["index"],)
            info = dict(info, index=(jnp.full_like(idx[0], w), *idx))
            return st, batch, jax.tree_util.tree_map(_rank1, info)

        fill = self.worker_fill(state)
        state, batch, info = jax.vmap(one)(state, jnp.arange(W, dtype=jnp.int32))
        merge = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])  # noqa: E731
        info = dict(jax.tree_util.tree_map(merge, info), worker_fill=fill)
        return state, jax.tree_util.tree_map(merge, batch), info

    def _sample_proportional(self, state: BufferState, key: jax.Array):
        W = self.num_workers
        k_pick, k_draw = jax.random.split(key)

        def one(st, w):
            # W local draws of batch_size / W: a full batch of candidates from this worker
            def rep(r):
                _, batch, info = self._local.sample(st, jax.random.fold_in(jax.random.fold_in(k_draw, w), r))
                idx = info["index"] if isinstance(info["index"], tuple) else (info["index"],)
                return batch, dict(info, index=(jnp.full_like(idx[0], w), *idx))

            batch, info = jax.vmap(rep)(jnp.arange(W, dtype=jnp.int32))
            merge = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])  # noqa: E731
            return jax.tree_util.tree_map(merge, (batch, info))

        batch, info = jax.vmap(one)(state, jnp.arange(W, dtype=jnp.int32))  # leaves [W, N, ...]
        can = jax.vmap(self._local.can_sample)(state)
        fill = self.worker_fill(state)
        mass = jnp.where(can, fill, 0)
        n = jax.tree_util.tree_leaves(batch)[0].shape[1]
        # exact integer draw: u uniform in [0, total), worker = first w with cumsum(mass)[w] > u
        u = _xla.below(jax.random.bits(k_pick, (n,)), jnp.maximum(jnp.sum(mass), 1))
        pick = jnp.sum(u[:, None] >= jnp.cumsum(mass)[None, :], axis=1).astype(jnp.int32)
        pick = jnp.minimum(pick, W - 1)
        take = lambda x: x[pick, jnp.arange(n)]  # noqa: E731
        batch, info = jax.tree_util.tree_map(take, (batch, info))
        return state, batch, dict(info, worker_fill=fill)

    @compiled_when_eager
    def can_sample(self, state: BufferState) -> jax.Array:
        self._check(state, "can_sample")
        each = jax.vmap(self._local.can_sample)(state)
        return jnp.any(each) if self.proportional else jnp.all(each)

    @compiled_when_eager
    def update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
        """Set priorities at ``index = (worker, *lane_idx, t)`` laid out as ``sample`` returned."""
        self._check(state, "update_priority")
        W = self.num_workers
        if self.proportional:  # items in batch order: each worker takes the entries it owns
            priority = jnp.broadcast_to(jnp.asarray(priority), jnp.shape(index[0]))

            def own(st, w):
                local, prio = _ignore_foreign(index[1:], index[0] == w, priority)
                return self._local.update_priority(st, local if st.layout.lanes else local[0], prio)

            return jax.vmap(own)(state, jnp.arange(W, dtype=jnp.int32))
        split = lambda x: jnp.reshape(x, (W, x.shape[0] // W, *x.shape[1:]))  # noqa: E731
        priority = split(jnp.broadcast_to(jnp.asarray(priority), jnp.shape(index[0])))
        index = tuple(split(i) for i in index)

        def one(st, w, index, priority):
            local, prio = _ignore_foreign(index[1:], index[0] == w, priority)
            return self._local.update_priority(st, local if st.layout.lanes else local[0], prio)

        return jax.vmap(one)(state, jnp.arange(W, dtype=jnp.int32), index, priority)
