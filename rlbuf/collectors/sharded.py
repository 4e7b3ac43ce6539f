"""``shard_collector``: a ``Collector`` or ``MultiSyncCollector`` whose envs (workers) are split
over the devices of a ``Mesh``; ``collect`` runs device-locally under ``shard_map``.

Trajectory ids without communication (a documented deviation from TorchRL's single counter
order): every shard runs the plain collector on its ``n = N / G`` envs with its own local
counter ``l`` (env ``j`` of the shard starts with ``l = j``; resets take ``n, n + 1, ...``),
and ids are made global by

    id = g * n + l                      if l < n   (initial ids: env i = g * n + j gets i)
    id = N + (l - n) * G + g            otherwise  (later ids: strided, shard g owns ids = g mod G)

so ids are unique across shards, batches and (with per-process shards) hosts, env ``i``
still starts with id ``i``, and a trajectory spanning batches keeps its id. Unlike the
single-device counter, ids issued after the first ones are not ordered by env across shards.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlbuf.collectors.collector import Collector
from rlbuf.collectors.multi import MultiSyncCollector
from rlbuf.sharding import _shard_map

TRAJ_KEY = ("collector", "traj_ids")


def global_traj_ids(local_ids, g, n_local: int, n_shards: int):
    """Map shard ``g``'s local trajectory ids to global ones (see the module docstring)."""
    local_ids = jnp.asarray(local_ids)
    return jnp.where(
        local_ids < n_local,
        g * n_local + local_ids,
        n_local * n_shards + (local_ids - n_local) * n_shards + g,
    ).astype(local_ids.dtype)


def _default_params(env):
    try:
        return env.default_params
    except (AttributeError, NotImplementedError):
        return None


def _slice_params(params: Any, reference: Any, lead: int, n_local: int) -> Any:
    """The first shard's share of ``env_params`` (only used for the local collector's static
    checks; the real per-env parameters travel in the sharded state): per-env/per-worker
    params (a list, or leaves with a leading ``[lead]`` axis beyond ``reference``) are cut to
    ``n_local``; shared params are returned as they are."""
    if params is None:
        return None
    if isinstance(params, (list, tuple)):
        return list(params)[:n_local]
    leaves = jax.tree_util.tree_leaves(params)
    if reference is not None and jax.tree_util.tree_structure(reference) == jax.tree_util.tree_structure(params):
        extra = {np.ndim(p) - np.ndim(r) for p, r in zip(leaves, jax.tree_util.tree_leaves(reference))}
        batched = extra != {0}
    else:
        batched = bool(leaves) and all(np.ndim(x) >= 1 and np.shape(x)[0] == lead for x in leaves)
    return jax.tree_util.tree_map(lambda x: x[:n_local], params) if batched else params


def split_collector(c: Any, G: int, who: str):
    """``(local, n_local)``: the plain collector one of ``G`` groups runs (``1 / G`` of the
    envs of a ``Collector`` or the workers of a ``MultiSyncCollector``, frames and
    ``init_random_frames`` divided by ``G``, no ``postproc``) and its number of flat envs."""
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
        local = dataclasses.replace(
            c,
            envs=tuple(c.envs)[:Wl],
            frames_per_batch=c.frames_per_batch // G,
            env_params=_slice_params(c.env_params, _default_params(c.envs[0]), W, Wl),
            init_random_frames=irf,
            postproc=None,
        )
        return local, W * B // G
    if isinstance(c, Collector):
        if c.num_envs is None or c.num_envs % G:
            raise ValueError(
                f"{who}: num_envs={c.num_envs} must be an int divisible by {G} groups (a single env cannot be split)"
            )
        N = int(c.num_envs)
        local = dataclasses.replace(
            c,
            frames_per_batch=c.frames_per_batch // G,
            num_envs=N // G,
            env_params=_slice_params(c.env_params, _default_params(c.env), N, N // G),
            init_random_frames=irf,
            postproc=None,
        )
        return local, N // G
    raise TypeError(f"{who}: expected a Collector or MultiSyncCollector, got {type(c).__name__}")


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
        names = self.axis_name if isinstance(self.axis_name, tuple) else (self.axis_name,)
        for a in names:
            if a not in self.mesh.shape:
                raise ValueError(f"shard_collector: axis_name {a!r} is not an axis of the mesh {dict(self.mesh.shape)}")
        G = int(np.prod([self.mesh.shape[a] for a in names]))
        local, n_local = split_collector(self.collector, G, "shard_collector")
        object.__setattr__(self, "_G", G)
        object.__setattr__(self, "_local", local)
        object.__setattr__(self, "_n_local", n_local)
        sharding = NamedSharding(self.mesh, P(self.axis_name))
        object.__setattr__(self, "_init", jax.jit(self._init_impl, out_shardings=sharding))

    @property
    def local_collector(self):
        """The plain collector each shard runs (``1 / G`` of the envs or workers)."""
        return self._local

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
        return global_traj_ids(local_ids, g, self._n_local, self._G)

    def _init_impl(self, key):
        return split_init(self.collector, self._local, self._G, self._n_local, key)

    def init(self, key: jax.Array):
        """The wrapped collector's initial state, split into ``G`` shards (see the class doc)."""
        return self._init(key)

    def collect(self, state, policy_params: Any = None):
        """``(state, batch)``: every shard collects its envs; ``batch`` is global, sharded on axis 0."""
        n, G = self._n_local, self._G

        def f(st, params):
            st = jax.tree_util.tree_map(lambda x: x[0], st)
            g = jax.lax.axis_index(self.axis_name)
            st, batch = self._local.collect(st, params)
            coll = dict(batch["collector"])
            coll["traj_ids"] = global_traj_ids(coll["traj_ids"], g, n, G)
            batch = dict(batch, collector=coll)
            return jax.tree_util.tree_map(lambda x: x[None], st), batch

        spec = P(self.axis_name)
        state, batch = _shard_map(f, mesh=self.mesh, in_specs=(spec, P()), out_specs=(spec, spec), check_vma=False)(
            state, policy_params
        )
        if self.collector.postproc is not None:
            batch = self.collector.postproc(batch)
        return state, batch


def shard_collector(collector: Any, mesh: Mesh, axis_name: Any = "data") -> ShardedCollector:
    """Split ``collector``'s envs (``Collector``) or workers (``MultiSyncCollector``) over ``mesh``
    along ``axis_name``; see :class:`ShardedCollector`."""
    return ShardedCollector(collector, mesh, axis_name)
