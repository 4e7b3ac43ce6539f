"""The collectors' counters: trajectory ids, step counts and frames, and their limits.

Every counter a collector keeps is here, with what happens at its limit (none of them wraps
into a wrong answer):

- Trajectory ids (``("collector","traj_ids")``, ``CollectorState.traj_ids/next_traj_id``)
  are :func:`id_dtype`: int64 under ``jax_enable_x64`` (unique for 2^63 episodes), int32
  otherwise. An int32 counter wraps after 2^32 episodes (ids run on through negative values);
  the id arithmetic below never compares id *values*, only ranks within a batch, so ids stay
  distinct among any 2^32 consecutive episodes (2^32 / G with G shards or async workers):
  consecutive episodes of an env never share an id, which is what trajectory-aware samplers
  read. A buffer holding more than 2^32 trajectories would need x64.
- ``step_count`` (int32, steps since the env's reset) saturates at 2^31 - 1.
- ``frames`` (frames collected, all envs) is int64 under x64, else int32 saturating at
  2^31 - 1; its only uses, ``frames < init_random_frames`` and ``frames > 0``, stay right
  (``init_random_frames`` is refused above the limit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def id_dtype():
    """Dtype of trajectory ids and of ``frames``: int64 under ``jax_enable_x64``, else int32."""
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def frames_limit() -> int:
    """Largest value of the ``frames`` counter (it saturates there)."""
    return int(np.iinfo(id_dtype()).max)


def saturating_add(x: jax.Array, n) -> jax.Array:
    """``x + n`` (``n >= 0``), clamped at ``x``'s dtype maximum instead of wrapping."""
    hi = jnp.iinfo(x.dtype).max
    n = jnp.asarray(n, x.dtype)
    return jnp.where(x > hi - n, hi, x + n)


def _scan(op, x, axis):
    # jnp.cumsum / lax.cummax lower to reduce_window, several times slower on CPU than this
    return jax.lax.associative_scan(op, x, axis=axis)


def _time_scans(done: jax.Array):
    """``(counts, latest)`` of a time-major ``done`` ``[T, N]``, both int32 ``[T, N]``:
    ``counts[t, i]`` = done steps of env ``i`` up to ``t``; ``latest[t, i]`` = 1 + the latest
    done step of env ``i`` up to ``t`` (0: none yet). One associative scan over time for both
    (stacked on a leading axis of 2): every counter below is read from these two (on XLA:CPU each
    scan level is a few kernels, so one scan instead of three is ~50 fewer launches).
    """
    T = done.shape[0]
    d = done.astype(jnp.int32)
    t1 = jnp.arange(1, T + 1, dtype=jnp.int32).reshape((T,) + (1,) * (done.ndim - 1))

    def op(a, b):  # (sum, max) of each pair
        return jnp.stack([a[0] + b[0], jnp.maximum(a[1], b[1])])

    c = _scan(op, jnp.stack([d, jnp.where(done, t1, 0)]), 1)
    return c[0], c[1]


def _traj_ids(done, ids0, next_id, scans):
    T = done.shape[0]
    dt = ids0.dtype
    d = done.reshape(T, -1).astype(jnp.int32)
    counts, latest = (x.reshape(T, -1) for x in scans)
    # rank of the id given at (t, i) = dones before it in time-major then env order: those of the
    # earlier steps (every env's count at t - 1), then those of envs < i at step t
    earlier = jnp.sum(counts, axis=1, dtype=jnp.int32) - jnp.sum(d, axis=1, dtype=jnp.int32)
    before = earlier[:, None] + (_scan(jnp.add, d, 1) - d if d.shape[1] > 1 else 0)
    # ranks only grow along time, so an env's current rank is the one given at its latest done
    rank = jnp.where(latest > 0, jnp.take_along_axis(before, jnp.maximum(latest - 1, 0), axis=0), -1)
    prev = jnp.concatenate([jnp.full_like(rank[:1], -1), rank[:-1]], axis=0)
    flat0 = ids0.reshape(1, -1)
    ids = jnp.where(prev >= 0, next_id + prev.astype(dt), flat0).reshape(done.shape)
    last = jnp.where(rank[-1] >= 0, next_id + rank[-1].astype(dt), flat0[0])
    return ids, last.reshape(done.shape[1:]), next_id + jnp.sum(d, dtype=dt)


def traj_ids(done: jax.Array, ids0: jax.Array, next_id: jax.Array):
    """Trajectory ids of a time-major rollout (TorchRL's rule: after each step, the done envs
    take the next ids of the global counter, in env order).

    Args:
        done: bool ``[T, *E]``.
        ids0: ``[*E]`` ids of the envs before the first step.
        next_id: ``[]`` the counter (id given to the next env that is done).

    Returns ``(ids [T, *E], ids after the last step [*E], counter after the rollout)``, all of
    ``ids0``'s dtype. Wrap-safe: only ranks (< ``T * prod(E)``) are compared, and the ids are
    ``next_id + rank`` in the counter's own (wrapping) arithmetic.
    """
    return _traj_ids(done, ids0, next_id, _time_scans(done))


def global_traj_ids(local_ids, g, n_local: int, n_shards: int):
    """Shard (or async worker) ``g``'s local trajectory ids as global ones.

    Each of ``G = n_shards`` groups of ``n = n_local`` envs runs its own counter ``l`` (env
    ``j`` starts with ``l = j``; resets take ``n, n + 1, ...``); without communication ids are

        id = g * n + l                      if l < n   (initial ids: env g * n + j gets it)
        id = G * n + (l - n) * G + g        otherwise  (strided: group g owns ids = g mod G)

    ``l < n`` is compared as an unsigned number, so a local counter that wrapped into negative
    values still maps to the strided ids (distinct among any 2^32 / G consecutive ones).
    """
    local_ids = jnp.asarray(local_ids)
    dt = local_ids.dtype
    unsigned = jnp.uint64 if dt == jnp.int64 else jnp.uint32
    first = local_ids.astype(unsigned) < n_local
    g = jnp.asarray(g).astype(dt)
    return jnp.where(
        first,
        g * n_local + local_ids,
        n_local * n_shards + (local_ids - n_local) * n_shards + g,
    ).astype(dt)


def _step_counts(done, count0, scans):
    T = done.shape[0]
    t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * (done.ndim - 1))
    latest = scans[1]  # 1 + index of the latest done step up to t (0: none yet)
    prev = jnp.concatenate([jnp.zeros_like(latest[:1]), latest[:-1]], axis=0)
    counts = jnp.where(prev > 0, t - prev, saturating_add(count0, t))
    last = jnp.where(latest[-1] > 0, T - latest[-1], saturating_add(count0, T))
    return counts, last


def step_counts(done: jax.Array, count0: jax.Array):
    """Steps since the last reset at every step of a time-major rollout (``done`` ``[T, *E]``,
    ``count0`` ``[*E]`` int32), and after it; saturating at 2^31 - 1."""
    return _step_counts(done, count0, _time_scans(done))


def add_counters(batch: dict, ids0: jax.Array, next_id: jax.Array, count0: jax.Array, *, time_axis: int,
                 with_carry: bool = False):
    """A collected batch with its counters, from its ``("next","terminated"|"truncated")`` flags
    (time on ``time_axis``: 0 for ``[T]``, 1 for ``[B, T]``): adds ``("next","done")``,
    ``step_count``, ``("collector","traj_ids")`` and, ``with_carry``, ``is_init``. The one
    place both collectors (jitted :class:`rlbuf.Collector`, host :class:`rlbuf.HostCollector`)
    turn flags into counters. Returns ``(batch, (ids, next_id, step_count))`` after the batch.
    """
    nxt = batch["next"]
    done = jnp.logical_or(nxt["terminated"], nxt["truncated"])
    # the counters run time-major over [T, B] flags (small arrays; the transposes are cheap)
    to_tm = (lambda x: x) if time_axis == 0 else (lambda x: jnp.swapaxes(x, 0, 1))
    done_tm = to_tm(done)
    scans = _time_scans(done_tm)  # shared by both counters
    ids, last_ids, next_id = _traj_ids(done_tm, ids0, next_id, scans)
    counts, last_count = _step_counts(done_tm, count0, scans)
    ids, counts = to_tm(ids), to_tm(counts)
    batch = {**batch, "next": {**nxt, "done": done}, "step_count": counts,
             "collector": {**batch.get("collector", {}), "traj_ids": ids}}
    if with_carry:
        batch["is_init"] = counts == 0
    return batch, (last_ids, next_id, last_count)
