"""Replay buffers split into lane groups: over the devices of a ``Mesh`` (``shard``) or over
the workers of an asynchronous collector (``PerWorkerReplayBuffer``).

Both keep one plain :class:`~rlbuf.replay_buffer.ReplayBuffer` state per group and stack the
groups on a new leading axis, so every sampler and writer runs unchanged on its group's
lanes. The local buffer of a group holds ``max_size / G`` transitions and draws
``batch_size / G`` items per ``sample``; the groups' draws are concatenated on the leading
batch axis, group ``g``'s items at ``[g * batch_size / G, (g + 1) * batch_size / G)``.

Sampling distribution: every group contributes the same number of items to each batch and
draws them with its own sampler over its own data, independently of the other groups
(keys: ``fold_in(key, g)``). Because synchronous adds give every group the same number of
steps, this is exactly uniform for ``RandomSampler`` (stratified by group, so slightly less
variance than i.i.d. uniform), an epoch of every stored item for
``SamplerWithoutReplacement`` (each group runs its own epoch of its items), and for
prioritized samplers it is ``P(i) = p_i^a / (G * sum_{j in group(i)} p_j^a)``: priorities are
normalized per group, not globally, and importance weights are computed (and max-normalized)
per group. Slice samplers pick each slice's trajectory uniformly among the group's eligible
trajectories, so a trajectory's probability is ``1 / (G * n_traj(group))``: uniform over all
trajectories only when groups hold equally many (in expectation, for i.i.d. envs). With unequal
groups (``PerWorkerReplayBuffer`` after workers of different speed delivered different numbers
of batches) small groups are over-represented. ``transform`` runs per group, on its items.

Batches and examples may use TorchRL-style tuple keys (``{("next", "obs"): x}``) as
:class:`ReplayBuffer` does: they are nested (and ``keys=`` applied) once, on the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlbuf import _tree
from rlbuf.replay_buffer import BufferState, ReplayBuffer

_shard_map = getattr(jax, "shard_map", None)
if _shard_map is None:  # pragma: no cover - jax < 0.7
    from jax.experimental.shard_map import shard_map as _legacy_shard_map

    def _shard_map(f, *, mesh, in_specs, out_specs, check_vma=False):
        return _legacy_shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma)


def _split_buffer(rb: ReplayBuffer, n: int, who: str) -> ReplayBuffer:
    """The buffer one of ``n`` lane groups runs: ``rb.split(n)`` (storage, sampler and writer
    each split by their own ``split``)."""
    if not isinstance(rb, ReplayBuffer):
        raise TypeError(f"{who}: expected a ReplayBuffer, got {type(rb).__name__}")
    return rb.split(n, who)


def _stored(rb: ReplayBuffer, data: Any, who: str) -> Any:
    """``data`` as ``rb.add`` would store it: TorchRL-style tuple keys turned into nesting, list
    leaves into arrays, and only ``rb.keys`` kept. Done once on the global batch, so the checks
    below see what is stored and the groups receive only stored keys (``nest``/``keys`` are
    idempotent: the groups' own ``add`` finds nothing left to do)."""
    return rb._stored(_tree.nest(data, who), who)


def _local_example(example: Any, ndim: int, n: int, who: str) -> Any:
    """One group's part of an ``add`` example: the leading lane dim divided by ``n``."""

    def cut(key, x):
        shape, dtype = _tree.leaf_spec(x)
        if ndim == 1:
            return jax.ShapeDtypeStruct(shape, dtype)
        if not shape or shape[0] % n:
            raise ValueError(
                f"{who}: leaf {_tree.key_str(key)} has shape {shape}; its leading lane dim must be "
                f"divisible by the {n} groups"
            )
        return jax.ShapeDtypeStruct((shape[0] // n, *shape[1:]), dtype)

    items = _tree.leaves_with_keys(example)
    leaves = [cut(k, x) for k, x in items]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(example), leaves)


def _check_global(rb: ReplayBuffer, layout, data: Any, n: int, who: str) -> None:
    """Trace-time validation of an ``add`` batch against the *global* layout, so errors name
    the shapes the user passed, not a group's."""
    if layout.ndim >= 2:
        glob = dataclasses.replace(layout, lanes=(layout.lanes[0] * n, *layout.lanes[1:]))
        rb.storage.check(glob, data)
    else:
        rb.storage.check(layout, data)
        for key, x in _tree.leaves_with_keys(data):
            if np.shape(x)[0] % n:
                raise ValueError(
                    f"{who}.add: key {_tree.key_str(key)} has {np.shape(x)[0]} transitions, not "
                    f"divisible by the {n} groups (ndim=1 splits the transition axis)"
                )


def _offset_index(index: Any, layout, g) -> Any:
    """A group's sampler index made global: the first lane index (``ndim >= 2``) or the ring
    slot (``ndim = 1``) offset by the group's start, i.e. an index into the groups' storages
    merged along their first axis (:meth:`ShardedReplayBuffer.global_storage`)."""
    if layout.lanes:
        return (index[0] + g * layout.lanes[0], *index[1:])
    return index + g * layout.capacity


def _ignore_foreign(index: tuple, owned, priority):
    """``(index, priority)`` for one group's ``update_priority``: entries that another group owns
    get the time index -1, which every sampler ignores (``Sampler.update_priority``: out-of-range
    entries are skipped), so no branch on "does this group own any entry" is needed."""
    priority = jnp.broadcast_to(jnp.asarray(priority), owned.shape)
    return (*index[:-1], jnp.where(owned, index[-1], -1)), priority


def _own_index(index: Any, layout, g, priority):
    """Inverse of :func:`_offset_index` for ``update_priority``: the group-local index, entries of
    other groups ignored (:func:`_ignore_foreign`)."""
    index = index if isinstance(index, tuple) else (index,)
    span = layout.lanes[0] if layout.lanes else layout.capacity
    first = index[0] - g * span
    owned = (first >= 0) & (first < span)
    local, priority = _ignore_foreign((first, *index[1:]), owned, priority)
    return (local if layout.lanes else local[0]), priority


def _rank1(x):
    return x if jnp.ndim(x) else x[None]


@dataclasses.dataclass(frozen=True)
class ShardedReplayBuffer:
    """A :class:`ReplayBuffer` whose lanes are split over the devices of ``mesh`` along
    ``axis_name`` (``G`` shards): ``add`` and ``sample`` run device-locally under
    ``shard_map``, so no storage crosses devices. Build it with :func:`shard`.

    State: a :class:`BufferState` whose every leaf carries a leading shard axis ``[G, ...]``
    sharded with ``NamedSharding(mesh, P(axis_name))``: storage ``[G, *local_lanes, capacity,
    ...]``, cursor/count/added ``[G]``, sampler and writer states ``[G, ...]``; ``state.layout``
    is one shard's layout (``local_lanes[0] = lanes[0] / G``, ``capacity`` steps per lane).
    Shard ``g`` holds global lanes ``[g * local_lanes[0], (g + 1) * local_lanes[0])`` (for
    ``ndim=1``: transitions ``[g * N / G, (g + 1) * N / G)`` of every added ``[N]`` batch).

    - ``add(state, data)``: ``data`` is the global batch ``[*lanes, T, ...]`` (``[N, ...]`` for
      ``ndim=1``), best already sharded on its leading axis (as a sharded collector emits it);
      each shard writes its lanes. ``lanes[0]`` (``N``) must be divisible by ``G``.
    - ``sample(state, key)``: shard ``g`` draws ``batch_size / G`` items with its sampler and
      ``fold_in(key, g)``; the batch is a global array ``[batch_size, ...]`` (slice samplers:
      ``[num_slices, slice_len, ...]``) sharded on its leading axis, ready for a
      data-parallel learner. ``info["index"]`` is global (see :meth:`global_storage`).
    - ``update_priority(state, info["index"], priority)``: ``index``/``priority`` must keep the
      layout ``sample`` returned (leading axis in ``G`` equal chunks, chunk ``g`` drawn from
      shard ``g``); items in another shard's chunk are ignored. No communication.
    - ``can_sample(state)``: every shard can sample (a ``G``-element reduction).

    The sampling distribution is described in :mod:`rlbuf.sharding`.
    """

    buffer: ReplayBuffer
    mesh: Mesh
    axis_name: Any = "data"

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"shard: mesh must be a jax.sharding.Mesh, got {type(self.mesh).__name__}")
        names = self.axis_name if isinstance(self.axis_name, tuple) else (self.axis_name,)
        for a in names:
            if a not in self.mesh.shape:
                raise ValueError(f"shard: axis_name {a!r} is not an axis of the mesh {dict(self.mesh.shape)}")
        self._local  # split now: a buffer that cannot be split raises here

    # -------------------------------------------------------------- plumbing
    @functools.cached_property
    def _n(self) -> int:
        names = self.axis_name if isinstance(self.axis_name, tuple) else (self.axis_name,)
        return int(np.prod([self.mesh.shape[a] for a in names]))

    @functools.cached_property
    def _local(self) -> ReplayBuffer:
        return _split_buffer(self.buffer, self._n, "shard")

    @property
    def num_shards(self) -> int:
        return self._n

    @property
    def local_buffer(self) -> ReplayBuffer:
        """The plain buffer each shard runs (``max_size / G``, ``batch_size / G``)."""
        return self._local

    @property
    def sharding(self) -> NamedSharding:
        """Sharding of every state leaf and of the leading axis of ``add``/``sample`` batches."""
        return NamedSharding(self.mesh, P(self.axis_name))

    def _smap(self, f, in_specs, out_specs):
        return _shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    def _index(self):
        return jax.lax.axis_index(self.axis_name)

    # -------------------------------------------------------------- API
    def init(self, example: Any) -> BufferState:
        """An empty sharded buffer for global ``add`` batches like ``example`` (arrays or
        ``ShapeDtypeStruct``s, leaves ``[*lanes, T, ...]``); each device allocates its own shard."""
        example = _tree.nest(example, "ShardedReplayBuffer.init")  # TorchRL-style tuple keys, list leaves
        local = _local_example(example, self._local.storage.ndim, self._n, "shard")
        leaves, treedef = jax.tree_util.tree_flatten(local)
        # jit's own cache, keyed on the (hashable) example signature: one compile per signature.
        return _sharded_init(self, treedef, tuple((x.shape, np.dtype(x.dtype).name) for x in leaves))

    def add(self, state: BufferState, data: Any) -> BufferState:
        """Write the global batch ``data`` (leaves ``[*lanes, T, ...]``), each shard its lanes."""
        data = _stored(self.buffer, data, "ShardedReplayBuffer.add")
        _check_global(self.buffer, state.layout, data, self._n, "ShardedReplayBuffer")

        def f(st, d):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            return jax.tree_util.tree_map(lambda x: x[None], self._local.add(st, d))

        spec = P(self.axis_name)
        return self._smap(f, (spec, spec), spec)(state, data)

    extend = add

    def sample(self, state: BufferState, key: jax.Array):
        """``(state, batch, info)``: ``batch_size / G`` items from each shard, concatenated."""

        def f(st, key):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            g = self._index()
            st, batch, info = self._local.sample(st, jax.random.fold_in(key, g))
            info = dict(info, index=_offset_index(info["index"], st.layout, g))
            info = jax.tree_util.tree_map(_rank1, info)
            return jax.tree_util.tree_map(lambda x: x[None], st), batch, info

        spec = P(self.axis_name)
        return self._smap(f, (spec, P()), (spec, spec, spec))(state, key)

    def can_sample(self, state: BufferState) -> jax.Array:
        """Bool scalar: every shard can return a full batch of real data."""

        def f(st):
            return self._local.can_sample(jax.tree_util.tree_map(lambda x: x[0], st))[None]

        spec = P(self.axis_name)
        return jnp.all(self._smap(f, (spec,), spec)(state))

    def update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
        """Set priorities at ``index`` (global, laid out as ``sample`` returned it)."""

        def f(st, index, priority):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            local, prio = _own_index(index, st.layout, self._index(), priority)
            st = self._local.update_priority(st, local, prio)
            return jax.tree_util.tree_map(lambda x: x[None], st)

        spec = P(self.axis_name)
        return self._smap(f, (spec, spec, spec), spec)(state, index, priority)

    # -------------------------------------------------------------- views
    def global_storage(self, state: BufferState) -> Any:
        """Storage leaves with the shard axis merged into the first lane axis: ``[*lanes,
        capacity, ...]`` (``[G * capacity, ...]`` for ``ndim=1``), so that
        ``global_storage(state)[k][info["index"]]`` is the sampled ``batch[k]``.

        A storage whose arrays are not one ``[*lanes, capacity, ...]`` leaf per key (e.g.
        ``compact_next``: ``("next", k)`` is rebuilt, ``rlbuf.compact.CompactState``) is read
        through its ``gather`` at every slot: a materialised copy with every key of the
        ``add`` batches (slots never written, or whose item the storage cannot return, hold
        what ``gather`` reads there)."""
        layout = state.layout
        if jax.tree_util.tree_structure(state.storage) == layout.treedef:
            return jax.tree_util.tree_map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), state.storage)
        grids = jnp.meshgrid(*[jnp.arange(d, dtype=jnp.int32) for d in (*layout.lanes, layout.capacity)],
                             indexing="ij")
        gather = jax.vmap(lambda st: self._local.storage.gather(layout, st, tuple(grids)))
        return jax.tree_util.tree_map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]),
                                      jax.jit(gather)(state.storage))

    def num_stored(self, state: BufferState) -> jax.Array:
        """int32 scalar: transitions stored over all shards (jittable; a ``G``-element reduction,
        multi-host safe)."""
        return jax.jit(jnp.sum)(state.count) * state.layout.n_lanes

    def shard_of(self, state: BufferState, g: int) -> BufferState:
        """Shard ``g``'s plain :class:`BufferState` (a host-side view, e.g. to compare with a
        plain :class:`ReplayBuffer`; fetches the data: single process, not for hot paths)."""
        return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)[g]), state)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sharded_init(srb: ShardedReplayBuffer, treedef, specs: tuple) -> BufferState:
    local = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in specs])

    def f():
        return jax.tree_util.tree_map(lambda x: x[None], srb._local.init(local))

    return srb._smap(f, (), P(srb.axis_name))()


def shard(rb: ReplayBuffer, mesh: Mesh, axis_name: Any = "data") -> ShardedReplayBuffer:
    """Split ``rb``'s lanes over ``mesh`` along ``axis_name`` (a mesh axis name or a tuple of
    them); see :class:`ShardedReplayBuffer`. ``rb`` keeps its global meaning: ``max_size`` and
    ``batch_size`` count over all shards and must be divisible by the number of shards."""
    return ShardedReplayBuffer(rb, mesh, axis_name)


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
    - ``can_sample(state)``: every worker's sub-buffer can sample.

    Sampling distribution: see :mod:`rlbuf.sharding` (each worker contributes equally).
    """

    buffer: ReplayBuffer
    num_workers: int

    def __post_init__(self):
        if not isinstance(self.num_workers, (int, np.integer)) or self.num_workers <= 0:
            raise ValueError(f"PerWorkerReplayBuffer: num_workers must be a positive int, got {self.num_workers!r}")
        self._local  # split now: a buffer that cannot be split raises here

    @functools.cached_property
    def _local(self) -> ReplayBuffer:
        return _split_buffer(self.buffer, int(self.num_workers), "PerWorkerReplayBuffer")

    @property
    def local_buffer(self) -> ReplayBuffer:
        """The plain buffer each worker runs (``max_size / W``, ``batch_size / W``)."""
        return self._local

    def num_stored(self, state: BufferState) -> jax.Array:
        """int32 scalar: transitions stored over all workers (jittable)."""
        return self._local.num_stored(state)

    def init(self, example: Any) -> BufferState:
        """Empty sub-buffers for worker batches like ``example`` (one worker's batch)."""
        example = _tree.nest(example, "PerWorkerReplayBuffer.init")
        states = [self._local.init(example) for _ in range(self.num_workers)]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

    def add_worker(self, state: BufferState, worker_id, batch: Any) -> BufferState:
        """Write one worker's ``batch`` into its sub-buffer (``worker_id``: int or int scalar)."""
        w = jnp.asarray(worker_id, jnp.int32)
        sub = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, w, keepdims=False), state)
        sub = self._local.add(sub, batch)
        return jax.tree_util.tree_map(lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y, w, 0), state, sub)

    def add(self, state: BufferState, batch: Any) -> BufferState:
        """Write a batch of every worker (leaves ``[W, *lanes, T, ...]``)."""
        batch = _stored(self.buffer, batch, "PerWorkerReplayBuffer.add")
        for key, x in _tree.leaves_with_keys(batch):
            if not np.shape(x) or np.shape(x)[0] != self.num_workers:
                raise ValueError(
                    f"PerWorkerReplayBuffer.add: key {_tree.key_str(key)} has shape {np.shape(x)}, "
                    f"expected a leading worker axis of {self.num_workers}"
                )
        return jax.vmap(self._local.add)(state, batch)

    extend = add

    def sample(self, state: BufferState, key: jax.Array):
        """``(state, batch, info)`` with ``batch_size / W`` items per worker, worker-major."""
        W = self.num_workers

        def one(st, w):
            st, batch, info = self._local.sample(st, jax.random.fold_in(key, w))
            idx = info["index"] if isinstance(info["index"], tuple) else (info["index"],)
            info = dict(info, index=(jnp.full_like(idx[0], w), *idx))
            return st, batch, jax.tree_util.tree_map(_rank1, info)

        state, batch, info = jax.vmap(one)(state, jnp.arange(W, dtype=jnp.int32))
        merge = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])  # noqa: E731
        return state, jax.tree_util.tree_map(merge, batch), jax.tree_util.tree_map(merge, info)

    def can_sample(self, state: BufferState) -> jax.Array:
        return jnp.all(jax.vmap(self._local.can_sample)(state))

    def update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
        """Set priorities at ``index = (worker, *lane_idx, t)`` laid out as ``sample`` returned."""
        W = self.num_workers
        split = lambda x: jnp.reshape(x, (W, x.shape[0] // W, *x.shape[1:]))  # noqa: E731
        priority = split(jnp.broadcast_to(jnp.asarray(priority), jnp.shape(index[0])))
        index = tuple(split(i) for i in index)

        def one(st, w, index, priority):
            local, prio = _ignore_foreign(index[1:], index[0] == w, priority)
            return self._local.update_priority(st, local if st.layout.lanes else local[0], prio)

        return jax.vmap(one)(state, jnp.arange(W, dtype=jnp.int32), index, priority)
