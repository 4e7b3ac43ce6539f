"""``MultiSyncCollector``: ``W`` synchronous workers stepped together in one jitted function."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._params import worker_params
from rlbuf.collectors.collector import Collector, CollectorState


@dataclasses.dataclass(frozen=True, eq=False)
class MultiSyncCollector:
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
        max_frames_per_traj, init_random_frames, reset_at_each_iter: as for
            :class:`Collector` (``init_random_frames`` counts frames over all workers).
        postproc: applied to the final (stacked or concatenated) batch.
        policy_carry, store_carry: as for :class:`Collector`; ``init_fn`` is called with the
            number of envs the policy sees, ``W * B`` (``W`` for single-env workers).

    The state is a :class:`CollectorState` over the flat ``W * B`` envs (worker-major, so a
    leading-axis sharding splits it into whole workers).
    """

    envs: Sequence[Any]
    policy: Callable | None = None
    _: dataclasses.KW_ONLY
    frames_per_batch: int
    num_envs: int | None = None
    env_params: Any = None
    cat_results: str | int = "stack"
    max_frames_per_traj: int | None = None
    init_random_frames: int = 0
    reset_at_each_iter: bool = False
    postproc: Callable | None = None

    policy_carry: Callable | None = None
    store_carry: bool = False

    def __post_init__(self):
        envs = tuple(self.envs)
        if not envs:
            raise ValueError("MultiSyncCollector needs at least one env")
        kinds = {type(e) for e in envs}
        if len(kinds) != 1:
            raise ValueError(f"all envs must be of one type, got {sorted(k.__name__ for k in kinds)}")
        W, B = self._W, self._B
        fpb = self.frames_per_batch
        if not isinstance(fpb, (int, np.integer)) or fpb <= 0 or fpb % (W * B):
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
        return Collector(
            env,
            self.policy,
            frames_per_batch=self.frames_per_batch,
            env_params=worker_params(env, self.env_params, self._W, self.num_envs),
            num_envs=self._W * self._B,
            max_frames_per_traj=self.max_frames_per_traj,
            init_random_frames=self.init_random_frames,
            reset_at_each_iter=self.reset_at_each_iter,
            policy_carry=self.policy_carry,
            store_carry=self.store_carry,
        )

    @property
    def num_workers(self) -> int:
        return self._W

    @property
    def batch_shape(self) -> tuple[int, ...]:
        T = self._inner._T
        per = (T,) if self.num_envs is None else (self._B, T)
        if self.cat_results == "stack":
            return (self._W,) + per
        per = list(per)
        per[self._cat_dim] *= self._W
        return tuple(per)

    def init(self, key: jax.Array) -> CollectorState:
        return self._inner.init(key)

    def collect(self, state: CollectorState, policy_params: Any = None):
        state, flat = self._inner.collect(state, policy_params)
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


MultiSyncDataCollector = MultiSyncCollector
