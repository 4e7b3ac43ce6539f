"""Replay buffers split into lane groups: over the devices of a ``Mesh`` (``shard``) or over
the workers of an asynchronous collector (``PerWorkerReplayBuffer``, in :mod:`rlbuf.scaling.per_worker`;
imported here too).

Both keep one plain :class:`~rlbuf.buffers.replay_buffer.ReplayBuffer` state per group and stack the
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
from rlbuf._shard_map import shard_map as _shard_map
from rlbuf.buffers.protocols import SplittableBuffer
from rlbuf.buffers.replay_buffer import BufferState, stored_count
from rlbuf.samplers import capabilities
from rlbuf.scaling._groups import (
    _check_global,
    _check_groups,
    _local_example,
    _offset_index,
    _own_index,
    _rank1,
    _split_buffer,
    _stored,
)


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

    The sampling distribution is described in :mod:`rlbuf.scaling.sharding`.
    """

    buffer: SplittableBuffer
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
    def _local(self) -> SplittableBuffer:
        return _split_buffer(self.buffer, self._n, "shard")

    @property
    def num_shards(self) -> int:
        return self._n

    @property
    def local_buffer(self) -> SplittableBuffer:
        """The plain buffer each shard runs (``max_size / G``, ``batch_size / G``)."""
        return self._local

    @property
    def sharding(self) -> NamedSharding:
        """Sharding of every state leaf and of the leading axis of ``add``/``sample`` batches."""
        return NamedSharding(self.mesh, P(self.axis_name))

    def _smap(self, f, in_specs, out_specs):
        return _shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    def _call(self, method: str, *args):
        """``self.<method>(*args)`` as one compiled program (see :func:`_jitted`)."""
        return _jitted(self, method, *args)

    def _check(self, state: BufferState, method: str) -> None:
        _check_groups(state, self._n, f"ShardedReplayBuffer.{method}",
                      f"the mesh has {self._n} devices along {self.axis_name!r}")

    def _index(self):
        return jax.lax.axis_index(self.axis_name)

    # -------------------------------------------------------------- API
    @property
    def batch_size(self) -> int:
        """Items per ``sample`` over all shards (the wrapped buffer's)."""
        return self.buffer.batch_size

    def init(self, example: Any) -> BufferState:
        """An empty sharded buffer for global ``add`` batches like ``example`` (arrays or
        ``ShapeDtypeStruct``s, leaves ``[*lanes, T, ...]``); each device allocates its own shard."""
        example = _tree.nest(example, "ShardedReplayBuffer.init")  # TorchRL-style tuple keys, list leaves
        local = _local_example(example, self._local.ndim, self._n, "shard")
        leaves, treedef = jax.tree_util.tree_flatten(local)
        # jit's own cache, keyed on the (hashable) example signature: one compile per signature.
        return _sharded_init(self, treedef, tuple((x.shape, np.dtype(x.dtype).name) for x in leaves))

    def add(self, state: BufferState, data: Any) -> BufferState:
        """Write the global batch ``data`` (leaves ``[*lanes, T, ...]``), each shard its lanes."""
        self._check(state, "add")
        data = _stored(self.buffer, data, "ShardedReplayBuffer.add")
        _check_global(self.buffer, state.layout, data, self._n, "ShardedReplayBuffer")
        return self._call("_add", state, data)

    def _add(self, state: BufferState, data: Any) -> BufferState:
        def f(st, d):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            return jax.tree_util.tree_map(lambda x: x[None], self._local.add(st, d))

        spec = P(self.axis_name)
        return self._smap(f, (spec, spec), spec)(state, data)

    extend = add

    def sample(self, state: BufferState, key: jax.Array):
        """``(state, batch, info)``: ``batch_size / G`` items from each shard, concatenated."""
        self._check(state, "sample")
        return self._call("_sample", state, key)

    def _sample(self, state: BufferState, key: jax.Array):
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
        self._check(state, "can_sample")
        return self._call("_can_sample", state)

    def _can_sample(self, state: BufferState) -> jax.Array:
        def f(st):
            return self._local.can_sample(jax.tree_util.tree_map(lambda x: x[0], st))[None]

        spec = P(self.axis_name)
        return jnp.all(self._smap(f, (spec,), spec)(state))

    def update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
        """Set priorities at ``index`` (global, laid out as ``sample`` returned it)."""
        self._check(state, "update_priority")
        return self._call("_update_priority", state, index, priority)

    def _update_priority(self, state: BufferState, index: Any, priority: jax.Array) -> BufferState:
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
        ``compact_next``: ``("next", k)`` is rebuilt, ``rlbuf.storages.compact.CompactState``) is read
        through its ``gather`` at every slot: a materialised copy with every key of the
        ``add`` batches (slots never written, or whose item the storage cannot return, hold
        what ``gather`` reads there)."""
        self._check(state, "global_storage")
        layout = state.layout
        if jax.tree_util.tree_structure(state.storage) == layout.treedef:
            return jax.tree_util.tree_map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), state.storage)
        grids = jnp.meshgrid(*[jnp.arange(d, dtype=jnp.int32) for d in (*layout.lanes, layout.capacity)],
                             indexing="ij")
        # beyond the SplittableBuffer protocol: a ReplayBuffer-like buffer exposes its storage
        storage = getattr(self._local, "storage", None)
        if storage is None:
            raise TypeError(f"global_storage: {type(self._local).__name__} has no storage to gather its "
                            "non-array state from")
        gather = jax.vmap(lambda st: storage.gather(layout, st, tuple(grids)))
        return jax.tree_util.tree_map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]),
                                      jax.jit(gather)(state.storage))

    def num_stored(self, state: BufferState) -> jax.Array:
        """Scalar: transitions stored over all shards (jittable; a ``G``-element reduction,
        multi-host safe; dtype as for ``ReplayBuffer.num_stored``: int32 below ``2**31``)."""
        self._check(state, "num_stored")
        return _count_jit(state.count, state.layout, state.sampler)

    def shard_of(self, state: BufferState, g: int) -> BufferState:
        """Shard ``g``'s plain :class:`BufferState` (a host-side view, e.g. to compare with a
        plain :class:`ReplayBuffer`; fetches the data: single process, not for hot paths)."""
        return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)[g]), state)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted(srb: ShardedReplayBuffer, method: str, *args):
    """``srb.<method>(*args)`` under ``jax.jit`` (``srb`` is frozen and hashable: one compile per
    buffer and argument signature). A ``shard_map`` called outside ``jit`` runs op by op and
    compiles every operation of the local buffer's program on each call (about a thousand
    small programs for one ``add``); inside a user's ``jit`` this ``jit`` is inlined."""
    return getattr(srb, method)(*args)


@functools.partial(jax.jit, static_argnums=1)
def _count_jit(count, layout, sampler_state):
    """``ReplayBuffer.num_stored`` over all groups: stored less consumed items."""
    n = stored_count(count, layout)
    return n - capabilities.consumed_items(sampler_state).astype(n.dtype)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sharded_init(srb: ShardedReplayBuffer, treedef, specs: tuple) -> BufferState:
    local = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in specs])

    def f():
        return jax.tree_util.tree_map(lambda x: x[None], srb._local.init(local))

    return srb._smap(f, (), P(srb.axis_name))()


def shard(rb: SplittableBuffer, mesh: Mesh, axis_name: Any = "data") -> ShardedReplayBuffer:
    """Split ``rb``'s lanes over ``mesh`` along ``axis_name`` (a mesh axis name or a tuple of
    them); see :class:`ShardedReplayBuffer`. ``rb`` keeps its global meaning: ``max_size`` and
    ``batch_size`` count over all shards and must be divisible by the number of shards."""
    return ShardedReplayBuffer(rb, mesh, axis_name)


from rlbuf.scaling.per_worker import PerWorkerReplayBuffer  # noqa: E402,F401  (public here too)
