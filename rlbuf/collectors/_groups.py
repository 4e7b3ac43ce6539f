"""``CollectorGroups``: a jittable collector's envs in ``G`` equal groups, each run by a plain
collector of its own (what ``Collector.split`` / ``MultiSyncCollector.split`` return).

Users: :class:`rlbuf.collectors.sharded.ShardedCollector` (one group per device) and
:class:`rlbuf.collectors.async_.MultiAsyncCollector` (one group per worker). Trajectory ids
without communication: each group runs its own local counter, and :meth:`global_ids` maps it
to ids unique over the groups (:func:`rlbuf.collectors._counters.global_traj_ids`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlbuf.collectors._counters import global_traj_ids


@dataclasses.dataclass(frozen=True, eq=False)
class CollectorGroups:
    """A collector split into ``groups`` groups of envs.

    Attributes:
        source: the collector that was split (its ``init`` resets the envs of every group).
        local: the plain collector of group 0 (shapes, static checks). It has no ``postproc``.
        n_local: flat envs per group (the leading axis of the group's env state leaves).
        groups: ``G``.
        params: per-group env params, leaves ``[G, ...]`` (None when shared by all groups).
        make: ``make(params_g)``: the collector of a group given its params (``params[g]``,
            may be traced: the collector is then built inside ``jit``/``shard_map``, one
            program for all groups, since a collector holds its env params as constants).
        postproc: the source's ``postproc``, for the caller to apply to the whole batch.
    """

    source: Any
    local: Any
    n_local: int
    groups: int
    params: Any
    make: Callable[[Any], Any]
    postproc: Callable | None = None

    def collector(self, params_g: Any) -> Any:
        return self.local if self.params is None else self.make(params_g)

    def map(self, fn: Callable[[Any], Any]) -> "CollectorGroups":
        """The same groups with every group's collector wrapped by ``fn`` (for a collector that
        wraps another one and splits by splitting it)."""
        make = self.make
        return dataclasses.replace(self, local=fn(self.local), make=lambda p: fn(make(p)))

    def init(self, key: jax.Array):
        """The source's ``init(key)`` (envs reset exactly as unsplit) reshaped to ``G`` groups:
        leaves ``[G, n_local, ...]`` (env leaves) or ``[G, ...]`` (scalars, shared env params),
        each group with its own key (``fold_in(key', g)``) and a local trajectory-id counter."""
        G, n_local = self.groups, self.n_local
        full = self.source.init(key)
        shapes = jax.eval_shape(self.local.init, key)

        def split(x, like):
            if tuple(x.shape) == tuple(like.shape):  # scalars, shared env params: one copy per group
                return jnp.broadcast_to(x, (G, *x.shape))
            return x.reshape(G, *like.shape)

        st = jax.tree_util.tree_map(split, full, shapes)
        keys = jax.vmap(jax.random.fold_in)(st.key, jnp.arange(G, dtype=jnp.uint32))
        ids = jnp.broadcast_to(jnp.arange(n_local, dtype=st.traj_ids.dtype), (G, n_local))
        return dataclasses.replace(st, key=keys, traj_ids=ids,
                                   next_traj_id=jnp.full((G,), n_local, st.next_traj_id.dtype))

    def global_ids(self, local_ids: jax.Array, g: Any) -> jax.Array:
        """Group ``g``'s local trajectory ids as the global ids batches carry."""
        return global_traj_ids(local_ids, g, self.n_local, self.groups)

    def collect(self, state_g: Any, policy_params: Any, g: Any, params_g: Any = None, *,
                policy_version: Any = None):
        """Group ``g``'s ``collect`` on its state ``state_g``: ``(state_g, batch)`` with global
        trajectory ids. ``g`` may be traced; ``params_g`` defaults to ``params[g]``."""
        if params_g is None:
            params_g = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[g], self.params)
        state_g, batch = self.collector(params_g).collect(state_g, policy_params, policy_version=policy_version)
        coll = dict(batch["collector"], traj_ids=self.global_ids(batch["collector"]["traj_ids"], g))
        return state_g, dict(batch, collector=coll)
