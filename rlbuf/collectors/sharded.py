"""``shard_collector``: a ``Collector`` or ``MultiSyncCollector`` whose envs (workers) are split
over the devices of a ``Mesh``; ``collect`` runs device-locally under ``shard_map``.

Trajectory ids without communication (a documented deviation from TorchRL's single counter
order): every shard runs the plain collector on its ``n = N / G`` envs with its own local
counter, and :func:`rlbuf.collectors._counters.global_traj_ids` makes its ids global (env
``i`` still starts with id ``i``; later ids are strided, shard ``g`` owning ids ``= g mod G``),
so ids are unique across shards, batches and (with per-process shards) hosts, and a trajectory
spanning batches keeps its id. Unlike the single-device counter, ids issued after the first
ones are not ordered by env across shards. :class:`Split` is shared with
:class:`rlbuf.collectors.async_.MultiAsyncCollector` (one group per worker).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlbuf.collectors._counters import global_traj_ids
from rlbuf.collectors._params import group_params
from rlbuf.collectors.collector import Collector
from rlbuf.collectors.multi import MultiSyncCollector
from rlbuf.sharding import _shard_map

TRAJ_KEY = ("collector", "traj_ids")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A collector split into ``G`` groups of envs (see :func:`split_collector`).

    ``local``: the plain collector of group 0 (shapes, static checks). ``n_local``: flat envs
    per group. ``groups``: ``G``. ``params``: per-group env params, leaves ``[G, ...]`` (None
    when shared). ``make(params_g)``: the collector of a group given its params (``params[g]``,
    may be traced: the collector is then built inside ``jit``/``shard_map``, one program for
    all groups, since a collector holds its env params as constants).
    """

    local: Any
    n_local: int
    groups: int
    params: Any
    make: Any

    def collector(self, params_g):
        return self.local if self.params is None else self.make(params_g)

    def init(self, collector: Any, key: jax.Array):
        """``collector``'s initial state split into the groups (see :func:`split_init`)."""
        return split_init(collector, self.local, self.groups, self.n_local, key)

    def global_ids(self, local_ids, g):
        """Group ``g``'s local trajectory ids as the global ids batches carry."""
        return global_traj_ids(local_ids, g, self.n_local, self.groups)

    def collect(self, state_g, policy_params: Any, g, params_g: Any = None):
        """Group ``g``'s ``collect`` on its state ``state_g``: ``(state_g, batch)`` with global
        trajectory ids. ``g`` may be traced; ``params_g`` defaults to ``params[g]``."""
        if params_g is None:
            params_g = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[g], self.params)
        state_g, batch = self.collector(params_g).collect(state_g, policy_params)
        coll = dict(batch["collector"], traj_ids=self.global_ids(batch["collector"]["traj_ids"], g))
        return state_g, dict(batch, collector=coll)


def split_collector(c: Any, G: int, who: str) -> Split:
    """Split ``c`` into ``G`` groups: ``1 / G`` of the envs of a ``Collector`` or of the workers
    of a ``MultiSyncCollector`` each, ``frames_per_batch`` and ``init_random_frames`` divided by
    ``G``, no ``postproc`` (applied by the caller on the whole batch)."""
    irf = math.ceil((c.init_random_frames or 0) / G)
    if isinstance(c, MultiSyncCollector):
        W, B = c.num_workers, (1 if c.num_envs is None else int(c.num_envs))
        if W % G:
            raise ValueError(f"{who}: {W} workers are not divisible by {G} groups")
        cat = c.cat_results
        nb = 1 if c.num_envs is None else 2
        if cat != "stack" and int(cat) % nb != 0:
            raise ValueError(
                f"{who}: cat_results={cat!r} concatenates along a non-leading dim; split "
                "collection needs 'stack' or 0 (workers on the leading axis)"
            )
        Wl = W // G
        flat = c._inner  # per-env params resolved once, in worker-major env order
        per_group = (Wl,) if c.num_envs is None else (Wl, B)
        grouped = group_params(flat._params, G, per_group) if flat._params_batched else None

        def make(p):
            return dataclasses.replace(c, envs=tuple(c.envs)[:Wl], frames_per_batch=c.frames_per_batch // G,
                                       env_params=p, init_random_frames=irf, postproc=None)

        n_local = W * B // G
    elif isinstance(c, Collector):
        if c.num_envs is None or c.num_envs % G:
            raise ValueError(
                f"{who}: num_envs={c.num_envs} must be an int divisible by {G} groups (a single env cannot be split)"
            )
        N = int(c.num_envs)
        grouped = group_params(c._params, G, (N // G,)) if c._params_batched else None

        def make(p):
            return dataclasses.replace(c, frames_per_batch=c.frames_per_batch // G, num_envs=N // G, env_params=p,
                                       init_random_frames=irf, postproc=None)

        n_local = N // G
    else:
        raise TypeError(f"{who}: expected a Collector or MultiSyncCollector, got {type(c).__name__}")
    first = c.env_params if grouped is None else jax.tree_util.tree_map(lambda x: x[0], grouped)
    return Split(make(first), n_local, G, grouped, make)


def split_init(collector: Any, local: Any, G: int, n_local: int, key: jax.Array):
    """``collector.init(key)`` (envs reset exactly as unsharded) reshaped to ``G`` groups: leaves
    ``[G, n_local, ...]`` (env leaves) or ``[G, ...]`` (scalars, shared env params), each group
    with its own key (``fold_in(key', g)``) and a local trajectory-id counter."""
    full = collector.init(key)
    shapes = jax.eval_shape(local.init, key)

    def split(x, l):
        if tuple(x.shape) == tuple(l.shape):  # scalars, shared env params: one copy per group
            return jnp.broadcast_to(x, (G, *x.shape))
        return x.reshape(G, *l.shape)

    st = jax.tree_util.tree_map(split, full, shapes)
    keys = jax.vmap(jax.random.fold_in)(st.key, jnp.arange(G, dtype=jnp.uint32))
    ids = jnp.broadcast_to(jnp.arange(n_local, dtype=st.traj_ids.dtype), (G, n_local))
    return dataclasses.replace(st, key=keys, traj_ids=ids, next_traj_id=jnp.full((G,), n_local, st.next_traj_id.dtype))


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
      :meth:`rlbuf.sharding.ShardedReplayBuffer.add` on the same mesh.
    - ``init(key)`` is the wrapped collector's ``init`` (envs reset exactly as unsharded),
      reshaped to shards: the state is a ``CollectorState`` whose leaves carry a leading
      ``[G]`` shard axis (``[G, n, ...]`` env leaves; scalars and shared env parameters
      ``[G, ...]``), sharded with ``NamedSharding(mesh, P(axis_name))``. Its ``traj_ids`` /
      ``next_traj_id`` are shard-local counters; batches carry global ids (module docstring).
    - ``postproc`` is applied to the global batch (outside the per-shard code), so it keeps
      its unsharded meaning; a postproc mixing envs causes communication.
    - ``init_random_frames`` counts frames over all shards, as unsharded.
    """

    collector: Any
    mesh: Mesh
    axis_name: Any = "data"

    def __post_init__(self):
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
    def _split(self) -> Split:
        return split_collector(self.collector, self._G, "shard_collector")

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

    def local_collect(self, state_g, policy_params: Any, g):
        """Shard ``g``'s step alone, off the mesh: the plain collector of its envs on its state
        ``state_g`` (``state[g]``); returns ``(state_g, batch_g)`` with global trajectory ids.
        ``g`` may be traced. ``collect`` computes exactly this on every shard at once."""
        return self._split.collect(state_g, policy_params, g)

    def _init_impl(self, key):
        return self._split.init(self.collector, key)

    def init(self, key: jax.Array):
        """The wrapped collector's initial state, split into ``G`` shards (see the class doc)."""
        return self._init(key)

    def collect(self, state, policy_params: Any = None):
        """``(state, batch)``: every shard collects its envs; ``batch`` is global, sharded on axis 0."""

        def f(st, group_params, params):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            g = jax.lax.axis_index(self.axis_name)
            params_g = jax.tree_util.tree_map(lambda x: x[0], group_params)
            st, batch = self._split.collect(st, params, g, params_g)
            return jax.tree_util.tree_map(lambda x: x[None], st), batch

        spec = P(self.axis_name)
        smap = _shard_map(f, mesh=self.mesh, in_specs=(spec, spec, P()), out_specs=(spec, spec), check_vma=False)
        # per-env params are host constants, sliced per shard inside the program (no transfer)
        state, batch = smap(state, self._split.params, policy_params)
        if self.collector.postproc is not None:
            batch = self.collector.postproc(batch)
        return state, batch


def shard_collector(collector: Any, mesh: Mesh, axis_name: Any = "data") -> ShardedCollector:
    """Split ``collector``'s envs (``Collector``) or workers (``MultiSyncCollector``) over ``mesh``
    along ``axis_name``; see :class:`ShardedCollector`."""
    return ShardedCollector(collector, mesh, axis_name)
