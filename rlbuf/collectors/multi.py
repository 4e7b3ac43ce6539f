"""``MultiSyncCollector``: ``W`` synchronous workers stepped together in one jitted function."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._groups import CollectorGroups
from rlbuf.collectors._params import group_params, worker_params
from rlbuf.collectors.collector import Collector, CollectorState
from rlbuf.collectors.options import CollectorOptions


@dataclasses.dataclass(frozen=True, eq=False)
class MultiSyncCollector(CollectorOptions):
    """TorchRL's ``MultiSyncDataCollector``: ``W`` workers of ``B`` envs (or single envs).

    All ``W * B`` envs are stepped in one ``lax.scan`` of one jitted ``collect``; the policy
    runs once per step on all of them (observations with a leading ``[W * B]`` axis in
    worker-major order, ``[W]`` for single-env workers). Trajectory ids follow one global
    counter over that flat worker-major env list, so they are unique across workers.

    Args:
        envs: ``W`` envs of one type. Only ``envs[0]``'s functions are used: per-worker
            differences must be in ``env_params``.
        policy: as for :class:`Collector`.
        frames_per_batch: total over workers; ``T = frames_per_batch // (W * B)``.
        num_envs: envs per worker (``None``: a single env per worker).
        env_params: shared; a list of ``W`` parameter sets; or a pytree with a leading ``[W]``
            (per worker) or ``[W, B]`` (per env) axis.
        cat_results: ``"stack"``: leaves ``[W, T, ...]`` or ``[W, B, T, ...]``. An int ``d``:
            the workers' batches (``[T]`` or ``[B, T]``) concatenated along their batch dim
            ``d`` (e.g. ``0`` gives ``[W * B, T]``; ``-1`` gives ``[B, W * T]``).
        max_frames_per_traj, init_random_frames, reset_at_each_iter, postproc, policy_carry,
            store_carry: the shared options (:class:`rlbuf.collectors.options.CollectorOptions`),
            handed whole to the flat collector that does the work. ``init_random_frames``
            counts frames over all workers; ``postproc`` is applied to the final (stacked or
            concatenated) batch; ``policy_carry``'s ``init_fn`` is called with the number of
            envs the policy sees, ``W * B`` (``W`` for single-env workers).

    The state is a :class:`CollectorState` over the flat ``W * B`` envs (worker-major, so a
    leading-axis sharding splits it into whole workers).
    """

    envs: Sequence[Any]
    policy: Callable | None = None
    _: dataclasses.KW_ONLY
    num_envs: int | None = None
    env_params: Any = None
    cat_results: str | int = "stack"

    __eq__ = object.__eq__  # hashed by identity (jit caches on it), not by its options' values
    __hash__ = object.__hash__

    jittable = True  # rlbuf.CollectorLike

    def __post_init__(self):
        super().__post_init__()
        envs = tuple(self.envs)
        if not envs:
            raise ValueError("MultiSyncCollector needs at least one env")
        kinds = {type(e) for e in envs}
        if len(kinds) != 1:
            raise ValueError(f"all envs must be of one type, got {sorted(k.__name__ for k in kinds)}")
        W, B = self._W, self._B
        fpb = self.frames_per_batch
        if fpb % (W * B):
            raise ValueError(
                f"frames_per_batch={fpb} must be a positive multiple of workers * num_envs = "
                f"{W} * {B} = {W * B}"
            )
        cat = self.cat_results
        if cat != "stack":
            nb = 1 if self.num_envs is None else 2
            if not isinstance(cat, (int, np.integer)) or not -nb <= cat < nb:
                raise ValueError(
                    f"cat_results must be 'stack' or an int in [{-nb}, {nb}) (the workers' "
                    f"batch dims), got {cat!r}"
                )
        self._inner  # noqa: B018 -- builds (and checks) the flat collector now

    @functools.cached_property
    def _W(self) -> int:
        return len(tuple(self.envs))

    @functools.cached_property
    def _B(self) -> int:
        return 1 if self.num_envs is None else int(self.num_envs)

    @functools.cached_property
    def _cat_dim(self) -> int:
        return int(self.cat_results) % (1 if self.num_envs is None else 2)

    @functools.cached_property
    def _inner(self) -> Collector:
        """The plain collector of all ``W * B`` envs (worker-major), which does the work."""
        env = tuple(self.envs)[0]
        return Collector(env, self.policy, env_params=worker_params(env, self.env_params, self._W, self.num_envs),
                         num_envs=self._W * self._B, **self.option_kwargs(postproc=None))

    @property
    def num_workers(self) -> int:
        return self._W

    @property
    def batch_shape(self) -> tuple[int, ...]:
        T = self._inner.batch_shape[-1]
        per: tuple[int, ...] = (T,) if self.num_envs is None else (self._B, T)
        if self.cat_results == "stack":
            return (self._W,) + per
        dims = list(per)
        dims[self._cat_dim] *= self._W
        return tuple(dims)

    def init(self, key: jax.Array) -> CollectorState:
        return self._inner.init(key)

    def collect(self, state: CollectorState, policy_params: Any = None, *, policy_version: Any = None):
        """One batch of every worker: ``(state, batch)`` (see the class docstring for the layout;
        ``policy_version`` as for :meth:`Collector.collect`)."""
        state, flat = self._inner.collect(state, policy_params, policy_version=policy_version)
        W, B = self._W, self._B
        single = self.num_envs is None
        per = (W,) if single else (W, B)
        batch = jax.tree.map(lambda x: x.reshape(per + x.shape[1:]), flat)
        if self.cat_results != "stack":
            d = self._cat_dim + 1  # the worker axis is 0
            # concatenating the W workers along dim d == moving W next to it and merging
            batch = jax.tree.map(
                lambda x: jnp.moveaxis(x, 0, d - 1).reshape(
                    x.shape[1:d] + (W * x.shape[d],) + x.shape[d + 1:]
                ),
                batch,
            )
        if self.postproc is not None:
            batch = self.postproc(batch)
        return state, batch

    def split(self, n_groups: int, who: str = "MultiSyncCollector.split") -> CollectorGroups:
        """The workers in ``n_groups`` groups of ``W / n_groups`` (``rlbuf.shard_collector``, the
        async collector's workers): each a ``MultiSyncCollector`` of its workers stacking them
        on the leading axis, with ``frames_per_batch`` and ``init_random_frames`` divided by
        ``n_groups`` and no ``postproc`` (the caller applies it to the whole batch)."""
        G = n_groups
        W, B = self._W, self._B
        if W % G:
            raise ValueError(f"{who}: {W} workers are not divisible by {G} groups")
        cat = self.cat_results
        if cat != "stack" and self._cat_dim != 0:
            raise ValueError(
                f"{who}: cat_results={cat!r} concatenates along a non-leading dim; split "
                "collection needs 'stack' or 0 (workers on the leading axis)"
            )
        Wl = W // G
        flat = self._inner.per_env_params  # resolved once, in worker-major env order
        per_group = (Wl,) if self.num_envs is None else (Wl, B)
        grouped = None if flat is None else group_params(flat, G, per_group)
        irf = math.ceil(self.random_frames / G)

        def make(p):
            return dataclasses.replace(self, envs=tuple(self.envs)[:Wl], frames_per_batch=self.frames_per_batch // G,
                                       env_params=p, init_random_frames=irf, postproc=None)

        first = self.env_params if grouped is None else jax.tree_util.tree_map(lambda x: x[0], grouped)
        return CollectorGroups(self, make(first), W * B // G, G, grouped, make, self.postproc)


MultiSyncDataCollector = MultiSyncCollector
