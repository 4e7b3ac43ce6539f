"""``shard_collector``: a collector (``Collector``, ``MultiSyncCollector``, or any
:class:`rlbuf.collectors.protocols.SplittableCollector`) whose envs (workers) are split over the
devices of a ``Mesh`` by its own ``split``; ``collect`` runs device-locally under ``shard_map``.

Trajectory ids without communication (a documented deviation from TorchRL's single counter
order): every shard runs the plain collector on its ``n = N / G`` envs with its own local
counter, and :func:`rlbuf.collectors._counters.global_traj_ids` makes its ids global (env
``i`` still starts with id ``i``; later ids are strided, shard ``g`` owning ids ``= g mod G``),
so ids are unique across shards, batches and (with per-process shards) hosts, and a trajectory
spanning batches keeps its id. Unlike the single-device counter, ids issued after the first
ones are not ordered by env across shards. The groups
(:class:`rlbuf.collectors._groups.CollectorGroups`) are the ones
:class:`rlbuf.collectors.async_.MultiAsyncCollector` runs as workers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlbuf._shard_map import shard_map
from rlbuf.collectors._groups import CollectorGroups
from rlbuf.collectors.protocols import SplittableCollector, require_collector


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedCollector:
    """A collector whose env axis (``Collector``: the ``num_envs`` envs; ``MultiSyncCollector``:
    the workers) is split over ``mesh`` along ``axis_name`` (``G`` shards). Same
    ``init(key)`` / ``collect(state, policy_params)`` / ``frames_per_batch`` / ``batch_shape`` as
    the wrapped collector, so ``rlbuf.iterate`` drives it too. Build it with :func:`shard_collector`.

    - ``collect`` under ``jit`` needs no communication: shard ``g`` steps its envs with the
      plain collector (its own key stream ``fold_in``-derived from ``init``'s key; the policy
      parameters replicated). The batch is the global ``[N, T, ...]`` (``[W, B, T, ...]``,
      ``[W * B, T, ...]`` for ``cat_results=0``) sharded on its leading axis, ready for
      :meth:`rlbuf.scaling.sharding.ShardedReplayBuffer.add` on the same mesh.
    - ``init(key)`` is the wrapped collector's ``init`` (envs reset exactly as unsharded),
      reshaped to shards: the state is a ``CollectorState`` whose leaves carry a leading
      ``[G]`` shard axis (``[G, n, ...]`` env leaves; scalars and shared env parameters
      ``[G, ...]``), sharded with ``NamedSharding(mesh, P(axis_name))``. Its ``traj_ids`` /
      ``next_traj_id`` are shard-local counters; batches carry global ids (module docstring).
    - ``postproc`` is applied to the global batch (outside the per-shard code), so it keeps
      its unsharded meaning; a postproc mixing envs causes communication.
    - ``init_random_frames`` counts frames over all shards, as unsharded.
    """

    collector: SplittableCollector
    mesh: Mesh
    axis_name: Any = "data"

    jittable = True  # rlbuf.CollectorLike

    def __post_init__(self):
        require_collector(self.collector, "shard_collector", SplittableCollector)
        for a in self._axis_names:
            if a not in self.mesh.shape:
                raise ValueError(f"shard_collector: axis_name {a!r} is not an axis of the mesh {dict(self.mesh.shape)}")
        self._split  # noqa: B018 -- splits (and checks) the collector now

    @functools.cached_property
    def _axis_names(self) -> tuple:
        return self.axis_name if isinstance(self.axis_name, tuple) else (self.axis_name,)

    @functools.cached_property
    def _G(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in self._axis_names]))

    @functools.cached_property
    def _split(self) -> CollectorGroups:
        return self.collector.split(self._G, "shard_collector")

    @functools.cached_property
    def _init(self):
        return jax.jit(self._init_impl, out_shardings=NamedSharding(self.mesh, P(self.axis_name)))

    @property
    def local_collector(self):
        """The plain collector each shard runs (``1 / G`` of the envs or workers)."""
        return self._split.local

    @property
    def num_shards(self) -> int:
        return self._G

    @property
    def frames_per_batch(self) -> int:
        return self.collector.frames_per_batch

    @property
    def batch_shape(self) -> tuple:
        return self.collector.batch_shape

    def global_traj_ids(self, local_ids, g):
        """Shard ``g``'s local ids (e.g. ``state.traj_ids[g]``) as the global ids batches carry."""
        return self._split.global_ids(local_ids, g)

    def local_collect(self, state_g, policy_params: Any, g, *, policy_version: Any = None):
        """Shard ``g``'s step alone, off the mesh: the plain collector of its envs on its state
        ``state_g`` (``state[g]``); returns ``(state_g, batch_g)`` with global trajectory ids.
        ``g`` may be traced. ``collect`` computes exactly this on every shard at once."""
        return self._split.collect(state_g, policy_params, g, policy_version=policy_version)

    def _init_impl(self, key):
        return self._split.init(key)

    def init(self, key: jax.Array):
        """The wrapped collector's initial state, split into ``G`` shards (see the class doc)."""
        return self._init(key)

    def collect(self, state, policy_params: Any = None, *, policy_version: Any = None):
        """``(state, batch)``: every shard collects its envs; ``batch`` is global, sharded on axis 0
        (``policy_version`` as for :meth:`rlbuf.Collector.collect`)."""
        state, batch = self._collect(state, policy_params, policy_version)
        if self._split.postproc is not None:
            batch = self._split.postproc(batch)
        return state, batch

    @functools.cached_property
    def _collect(self):
        # Under jit: a shard_map called outside jit runs op by op, compiling every operation of
        # the rollout on each call; inside a user's jit this jit is inlined.
        return jax.jit(self._collect_impl)

    def _collect_impl(self, state, policy_params: Any, policy_version: Any):
        def f(st, group_params, params, version):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            g = jax.lax.axis_index(self.axis_name)
            params_g = jax.tree_util.tree_map(lambda x: x[0], group_params)
            st, batch = self._split.collect(st, params, g, params_g, policy_version=version)
            return jax.tree_util.tree_map(lambda x: x[None], st), batch

        spec = P(self.axis_name)
        smap = shard_map(f, mesh=self.mesh, in_specs=(spec, spec, P(), P()), out_specs=(spec, spec), check_vma=False)
        # per-env params are host constants, sliced per shard inside the program (no transfer)
        return smap(state, self._split.params, policy_params, policy_version)


def shard_collector(collector: SplittableCollector, mesh: Mesh, axis_name: Any = "data") -> ShardedCollector:
    """Split ``collector``'s envs (``Collector``) or workers (``MultiSyncCollector``), or those of
    any :class:`rlbuf.collectors.protocols.SplittableCollector`, over ``mesh`` along
    ``axis_name`` (by ``collector.split``); see :class:`ShardedCollector`."""
    return ShardedCollector(collector, mesh, axis_name)
