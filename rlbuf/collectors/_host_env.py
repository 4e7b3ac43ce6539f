"""The host side of :class:`rlbuf.HostCollector`: gymnasium vector envs (any autoreset mode) and
EnvPool pools as env groups (``_Group``), their final observations, and the host buffers one
batch is assembled in before it moves to the device once."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._counters import add_counters

NEXT_STEP, SAME_STEP, DISABLED = "nextstep", "samestep", "disabled"


def _autoreset_mode(vec: Any) -> str:
    mode = getattr(vec, "metadata", {}).get("autoreset_mode", None)
    if mode is None:
        mode = getattr(vec, "autoreset_mode", NEXT_STEP)
    return str(getattr(mode, "value", mode)).lower().replace("_", "")


class _Group:
    """One vector env with the few operations the collector needs, whatever its autoreset mode.

    Every end of episode is turned into an immediate reset of exactly the envs that ended
    (``reset(options={"reset_mask": m})``), so with every mode each step is a real transition
    and the next observation of a done step is its final one.
    """

    def __init__(self, vec: Any):
        self.vec = vec
        self.envpool = _is_envpool(vec)
        if self.envpool:
            batch = int(vec.config.get("batch_size", 0) or 0) if hasattr(vec, "config") else 0
            if batch and batch != int(vec.num_envs):
                raise ValueError(f"HostCollector needs a synchronous EnvPool pool (batch_size == num_envs), "
                                 f"got batch_size={batch}, num_envs={int(vec.num_envs)}: every step must "
                                 "return every env (for overlap, pass several pools as env groups)")
            self._ids = np.arange(int(vec.num_envs), dtype=np.int32)
        self.num = int(vec.num_envs) if hasattr(vec, "num_envs") else len(vec)
        self.mode = NEXT_STEP if self.envpool else _autoreset_mode(vec)
        if self.mode not in (NEXT_STEP, SAME_STEP, DISABLED):
            raise ValueError(f"unknown gymnasium autoreset mode {self.mode!r}")
        # gymnasium vector envs: single_action_space; an EnvPool pool's action_space is one env's
        self.action_space = getattr(vec, "single_action_space", None) or vec.action_space
        self.async_ = hasattr(vec, "step_async") and hasattr(vec, "step_wait")
        # EnvPool's action space is one env's: random actions for all come from its batched form
        # (one draw, not one per env)
        self._batch_space: Any = _batch_space(self.action_space, self.num) if self.envpool else None
        self._pending: np.ndarray | None = None  # a synchronous vector env's action until step_wait

    def check_alive(self):
        """A gymnasium ``AsyncVectorEnv`` shuts down a worker whose env raised (its pipe becomes
        None, and every later call dies with ``'NoneType' object has no attribute 'send'``):
        say which workers are gone and what to do."""
        pipes = getattr(self.vec, "parent_pipes", None)
        dead = [i for i, p in enumerate(pipes or ()) if p is None]
        if dead or getattr(self.vec, "closed", False):
            what = f"its workers {dead} were shut down after their env raised" if dead else "it is closed"
            raise RuntimeError(f"HostCollector: the vector env {type(self.vec).__name__} cannot be used again: "
                               f"{what}; close it and build a new vector env (and a new HostCollector)")

    def reset_all(self, seed: int):
        self.check_alive()
        if self.envpool:
            self._batch_space.seed(seed)
            return self.vec.reset()[0]
        self.vec.action_space.seed(seed)
        return self.vec.reset(seed=seed)[0]

    def reset_some(self, mask: np.ndarray, obs: Any):
        if self.envpool:  # EnvPool resets by env id and returns only those envs' observations
            ids = np.nonzero(mask)[0].astype(np.int32)
            new = self.vec.reset(ids)[0]

            def put(o, n):
                o = np.array(o, copy=True)
                o[ids] = n
                return o
            return jax.tree.map(put, obs, new)
        return self.vec.reset(options={"reset_mask": mask})[0]

    def step_async(self, action: np.ndarray):
        if self.envpool:  # the pool's threads step while the caller goes on (recv waits)
            self.vec.send(action, self._ids)
        elif self.async_:
            self.vec.step_async(action)
        else:
            self._pending = action

    def step_wait(self):
        if self.envpool:
            out = self.vec.recv()
            order = np.argsort(out[4]["env_id"])  # recv returns envs in the order they finished
            if not np.array_equal(order, self._ids):
                out = tuple(jax.tree.map(lambda x: np.asarray(x)[order], o) for o in out[:4]) + (out[4],)
        elif self.async_:
            out = self.vec.step_wait()
        else:
            out = self.vec.step(self._pending)
        obs, rew, term, trunc, info = out
        # (rewards are cast to float32 by the write into the batch buffer)
        return obs, rew, np.asarray(term, bool), np.asarray(trunc, bool), info

    def random_actions(self):
        if self.envpool:
            return self._batch_space.sample()
        return self.vec.action_space.sample()

    def close(self):
        self.vec.close()


class PoisonedStateError(RuntimeError, ValueError):
    """A ``collect`` failed while the envs were stepping: no state matches the envs any more
    (a ``ValueError`` too, like the stale-state error)."""


def check_action_dtype(dtype, group: _Group) -> None:
    """Refuse actions the env would cast to another value (a float 1.7 for ``Discrete(3)``
    executes as 1 while the batch would store 1.7): integer/bool spaces need integer/bool
    actions; any action of a float space is exact enough. Runs before any env steps."""
    space = group.action_space
    want = getattr(space, "dtype", None)
    if want is None:  # composite (Dict/Tuple) spaces: the env checks its parts
        return
    dtype, want = np.dtype(dtype), np.dtype(want)
    if want.kind in "biu" and dtype.kind not in "biu":
        raise TypeError(f"HostCollector: the policy returned actions of dtype {dtype} for the action space "
                        f"{space} (dtype {want}): the env would cast them (e.g. 1.7 -> 1) and the batch "
                        "would store actions that were not executed; return integer actions (e.g. "
                        "jnp.argmax(...) or .astype(jnp.int32))")

def check_action_values(action: np.ndarray, group: _Group) -> None:
    """Integer actions of a narrower env dtype (int32 -> int8) must fit it (checked per step,
    only where the cast is not safe)."""
    want = np.dtype(group.action_space.dtype)
    info = np.iinfo(want) if want.kind in "iu" else None
    if info is not None and action.size and (action.min() < info.min or action.max() > info.max):
        raise ValueError(f"HostCollector: the policy returned actions in [{action.min()}, {action.max()}], "
                         f"outside the action space {group.action_space}'s dtype {want}: the env would "
                         "execute other (wrapped) actions than the batch stores")


def _batch_space(space: Any, n: int) -> Any:
    from gymnasium.vector.utils import batch_space

    return batch_space(space, n)


def _is_envpool(vec: Any) -> bool:
    """An EnvPool pool (its gymnasium class lives in module ``abc``; its bases in ``envpool``)."""
    return any(c.__module__.split(".")[0] == "envpool" for c in type(vec).__mro__)


def _as_groups(env: Any) -> list[_Group]:
    if isinstance(env, (list, tuple)):
        envs = list(env)
    else:
        envs = [env]
    groups = []
    for e in envs:
        if callable(e) and not hasattr(e, "step"):
            e = e()
        if not hasattr(e, "step") or not hasattr(e, "reset"):
            raise TypeError(f"HostCollector needs a gymnasium VectorEnv (or a callable making one, or an "
                            f"EnvPool pool), got {type(e).__name__}")
        if not hasattr(e, "num_envs") and not hasattr(type(e), "__len__"):
            raise TypeError(_single_env_message(e))
        groups.append(_Group(e))
    return groups


def _single_env_message(env: Any) -> str:
    spec = getattr(env, "spec", None)
    name = repr(getattr(spec, "id", None) or "ENV_ID")
    return (f"HostCollector needs a vector env (gymnasium.vector.VectorEnv, with num_envs), got a single env "
            f"{type(env).__name__}: make one with gymnasium.make_vec({name}, num_envs=n) (vectorization_mode="
            f"'sync' or 'async'), or gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make({name})] * n) "
            "(AsyncVectorEnv alike)")


def _final_obs(info: dict, i: int) -> Any:
    final = info.get("final_obs", info.get("final_observation"))
    if final is None:
        raise KeyError("same-step autoreset env returned a done step without info['final_obs']")
    return final[i]


def _alloc(obs, action, B, T):
    """Host buffers ``[B, T, ...]`` for what one batch's steps write (observations keep their
    dtype and structure; float64 is stored as float32, as JAX would); the counters are added
    on the device."""

    def like(x):
        x = np.asarray(x)
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        return np.empty((B, T) + x.shape[1:], dtype)

    return {
        "observation": jax.tree.map(like, obs),
        "action": jax.tree.map(like, action),
        "next": {
            "observation": jax.tree.map(like, obs),
            "reward": np.empty((B, T), np.float32),
            "terminated": np.empty((B, T), bool),
            "truncated": np.empty((B, T), bool),
        },
    }


def batch_keys(key, n):
    """``(next key, n keys)``: the policy keys of one batch, as raw key data (the host hands one
    row to each policy call; a typed key in or out of every call costs host work per step)."""
    key, k = jax.random.split(key)
    keys = jax.random.split(k, n)
    return key, jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys


def finish_batch(batch, extras, ids0, next_id, count0, ret0, *, with_carry=False, layout=None):
    """A host batch on the device, with its counters (jitted once per batch by the collector).

    ``batch``: the host buffers of :func:`_alloc` (``[B, T, ...]``), ``extras`` the policy's
    (put at the root). Adds ``step_count``, ``("collector","traj_ids")``, ``("next","done")``,
    ``("next","episode_reward")`` (and ``is_init`` ``with_carry``), computed from the flags and
    rewards by :class:`rlbuf.Collector`'s rules and functions (``collectors/_counters.py``) from
    the counters before the batch: ids ``ids0 [B]``, ``next_id []``, step counts ``count0 [B]``,
    returns ``ret0 [B]``. Returns ``(batch, (ids, next_id, step_count, episode_reward))``, the
    counters after it. ``layout``: the env's ``batch_layout(step, info)`` hook, applied to the
    whole ``[B, T]`` batch with the stored per-step info (``batch["info"]``).
    """
    batch = {**batch, **extras}
    if layout is not None:
        info = batch.pop("info")
        batch = layout(batch, info)
    batch, (last_ids, next_id, last_count) = add_counters(
        batch, ids0, next_id, count0, time_axis=1, with_carry=with_carry)
    nxt = batch["next"]

    def accumulate(ret, x):  # sequential, as each step adds its reward in Collector
        r = ret + x[0]
        return jnp.where(x[1], jnp.zeros_like(r), r), r

    last_ret, ret = jax.lax.scan(accumulate, ret0, (nxt["reward"].T, nxt["done"].T))
    batch["next"] = {**nxt, "episode_reward": ret.T}
    return batch, (last_ids, next_id, last_count, last_ret)


def _tmap(fn, *trees):
    """``jax.tree.map`` with a fast path for plain arrays (the common observation), since the
    collector's per-step host work is part of every frame's cost."""
    if isinstance(trees[0], np.ndarray):
        return fn(*trees)
    return jax.tree.map(fn, *trees)


def _put(buf, a, b, t, value):
    """``buf[a:b, t] = value`` leaf by leaf (a plain array directly: the common case, per step)."""
    if isinstance(buf, np.ndarray):
        buf[a:b, t] = value
    else:
        jax.tree.map(lambda dst, src: dst.__setitem__((slice(a, b), t), src), buf, value)


def make_groups(make_env: Callable[[int], Any], num_envs: int, num_groups: int = 2) -> list:
    """``num_groups`` vector envs of ``num_envs // num_groups`` envs each, from
    ``make_env(n) -> VectorEnv``: the ``env=`` of a :class:`HostCollector` that alternates them."""
    if num_envs % num_groups:
        raise ValueError(f"num_envs={num_envs} is not divisible by num_groups={num_groups}")
    return [make_env(num_envs // num_groups) for _ in range(num_groups)]
