"""Per-env parameter inference: the one place that decides whether ``env_params`` are shared
or carry leading per-env / per-worker axes, for every collector.

``env_params`` are compile-time constants of a collector (not state). A pytree may carry
leading axes beyond ``env.default_params`` (detected by comparing leaf ranks) or, for envs
without ``default_params``, a common leading shape that matches one of the allowed ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._env import strong


def default_params(env: Any) -> Any:
    """``env.default_params``, or None when the env has none."""
    try:
        return env.default_params
    except (AttributeError, NotImplementedError):
        return None


def _leading(params: Any, naxes: int) -> set:
    return {tuple(np.shape(x)[:naxes]) for x in jax.tree.leaves(params)}


def per_env_axes(reference: Any, params: Any, shapes: Sequence[tuple[int, ...]], what: str) -> int:
    """How many leading per-env axes ``params`` has: 0 (shared) or ``len(s)`` for the one
    ``s`` of ``shapes`` that its leaves' leading dims equal. Raises naming the sizes when the
    leaves have extra axes that match none of ``shapes``.

    ``reference`` (the env's ``default_params``, or None) decides by rank difference; without
    it, the params are per-env when every leaf starts with one of ``shapes`` (longest first).
    """
    if params is None:
        return 0
    naxes = None
    if reference is not None:
        try:
            diffs = jax.tree.leaves(jax.tree.map(lambda p, r: (np.ndim(p) - np.ndim(r),), params, reference))
        except (ValueError, TypeError):
            diffs = None
        if diffs is not None:
            extra = set(diffs)
            if len(extra) > 1:
                raise ValueError(
                    "env_params leaves disagree on their number of leading (per-env) axes relative to "
                    f"env.default_params: {sorted(extra)}"
                )
            naxes = extra.pop() if extra else 0
    if naxes is None:  # no reference: a common leading shape among the allowed ones is per-env
        leaves = jax.tree.leaves(params)
        for s in sorted(shapes, key=len, reverse=True):
            if leaves and all(np.ndim(x) >= len(s) for x in leaves) and _leading(params, len(s)) == {tuple(s)}:
                return len(s)
        return 0
    if naxes == 0:
        return 0
    sizes = _leading(params, naxes)
    if any(len(s) == naxes and sizes == {tuple(s)} for s in shapes):
        return naxes
    got = sorted(s[0] for s in sizes) if naxes == 1 else sorted(sizes)
    raise ValueError(f"env_params has a per-env leading axis of size {got} but {what}")


def collector_params(env: Any, params: Any, num_envs: int | None) -> tuple[Any, bool]:
    """A :class:`Collector`'s params (``env.default_params`` when None) as strong-typed arrays,
    and whether they carry a leading ``[num_envs]`` axis (one set per env)."""
    reference = default_params(env)
    given = params is not None
    params = reference if params is None else params
    shapes = [] if num_envs is None else [(num_envs,)]
    naxes = per_env_axes(reference, params, shapes, f"num_envs={num_envs}") if given else 0
    params = jax.tree.map(strong, params) if params is not None else None
    return params, naxes == 1


def worker_params(env: Any, params: Any, W: int, B: int | None) -> Any:
    """``MultiSyncCollector`` params as one set per flat (worker-major) env ``[W * B, ...]``,
    or shared. ``params``: shared, a list of ``W`` sets, or leaves with a leading ``[W]``
    (per worker) or ``[W, B]`` (per env) axis. ``B=None``: single-env workers."""
    if params is None:
        return None
    b = 1 if B is None else B
    if isinstance(params, (list, tuple)):
        if len(params) != W:
            raise ValueError(f"got {len(params)} per-worker env_params for {W} workers")
        params = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *params)
        naxes = 1
    else:
        shapes = [(W,)] if B is None else [(W,), (W, B)]
        naxes = per_env_axes(default_params(env), params, shapes,
                             f"expected [W]={W} (per worker) or [W, B]=({W}, {b}) (per env)")
    if naxes == 0:
        return params
    if naxes == 1:  # per worker: each of its B envs shares it
        return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), b, axis=0), params)
    return jax.tree.map(lambda x: jnp.reshape(jnp.asarray(x), (W * b,) + np.shape(x)[2:]), params)


def group_params(flat: Any, G: int, per_group: tuple[int, ...]) -> Any:
    """Per-env params ``[N, ...]`` (already resolved by :func:`collector_params`) split into
    ``G`` groups as host arrays ``[G, *per_group, ...]`` (``prod(per_group) = N / G``)."""
    return jax.tree.map(lambda x: np.reshape(np.asarray(x), (G, *per_group, *np.shape(x)[1:])), flat)
