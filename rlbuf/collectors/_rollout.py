"""The rollout: one ``lax.scan`` of ``T`` steps of a collector's envs, in TorchRL's layout.

Only what the env dynamics (and the policy's carry) need is carried through the loop: loop
invariants are closed over, and trajectory ids and step counts (pure functions of the done
flags) are computed after it with a few vectorized ops (:mod:`rlbuf.collectors._counters`).

Each step is written straight into the batch's ``[B, T, ...]`` buffers (carried through the
loop, ``dynamic_update_slice`` at time ``t``), not stacked time-major by ``scan`` and
transposed afterwards: that transpose was a second full pass over the batch's largest leaves
(image or grid observations, a recurrent policy's stored carry).

Layout hook (multi-agent and other structured envs): each step's dict is built in one place,
``body`` below. If the env defines ``batch_layout(step, info) -> dict``, it is applied to that
dict before it is written, once per env (vmapped: ``step`` and ``info`` hold one env's leaves,
no env axis), with ``info`` the env step's info pytree (``{}`` when the env gives none). The
hook may regroup keys (e.g. ``{agent: obs}`` into ``(group, "observation")`` ``[A_g, ...]``) and
add keys from ``info``; it must keep ``("next", "terminated")`` and ``("next", "truncated")``
(per-env bool scalars: the counters are computed from them). Observations, actions (the
policy's output) and random actions may be any pytree (e.g. dicts of groups); the env's reward
is one scalar per env and ``("next", "episode_reward")`` is its running sum.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlbuf.collectors._counters import add_counters, id_dtype, saturating_add
from rlbuf.collectors._env import EnvAdapter, strong, tree_select
from rlbuf.collectors.options import CollectorOptions


@dataclasses.dataclass(frozen=True, eq=False)
class RolloutSpec:
    """Everything a rollout needs to know about its collector, stated explicitly.

    Attributes:
        adapter: the env, behind the env protocol (:class:`rlbuf.collectors._env.EnvAdapter`).
        env_params: env params (compile-time constants), ``[N, ...]`` when ``params_batched``.
        params_batched: one params set per env.
        num_envs: ``None`` for one env without an env axis, else ``N``.
        T: steps per batch.
        options: the collector's :class:`CollectorOptions`.
        act: the checked policy call ``act(params, obs, key, carry) -> (action, extras,
            new_carry)`` on all envs' observations, or None (random actions only).
        random_act: ``random_act(key, env_params, observation) -> action`` for all envs (the
            observation: for envs whose random actions depend on it, e.g. action masks).
        carry0: ``carry0() -> carry``: the initial policy carry (None without ``policy_carry``).
    """

    adapter: EnvAdapter
    env_params: Any
    params_batched: bool
    num_envs: int | None
    T: int
    options: CollectorOptions
    act: Callable | None
    random_act: Callable
    carry0: Callable | None

    @property
    def num(self) -> int:
        return 1 if self.num_envs is None else int(self.num_envs)

    @property
    def pax(self):
        """The env params' vmap axis."""
        return 0 if self.params_batched else None

    @property
    def lead(self) -> tuple[int, ...]:
        return () if self.num_envs is None else (self.num,)

    def env_map(self, fn, in_axes):
        """``vmap`` over envs; a single-env collector (``num_envs=None``) runs ``fn`` as is,
        without a size-1 env axis (cheaper per step, and its state has no env axis)."""
        return fn if self.num_envs is None else jax.vmap(fn, in_axes=in_axes)

    def env_keys(self, key):
        return key if self.num_envs is None else jax.random.split(key, self.num)

    def env_range(self, start):
        start = jnp.asarray(start, id_dtype())
        return start if self.num_envs is None else start + jnp.arange(self.num, dtype=start.dtype)

    def reset_all(self, key):
        """Every env reset: ``(observation, env_state)``, strong-typed leaves ``[N, ...]``."""
        reset = self.env_map(self.adapter.reset, (0, self.pax))
        obs, st = reset(self.env_keys(key), self.env_params)
        return jax.tree.map(strong, obs), jax.tree.map(strong, st)

    @functools.cached_property
    def time_axis(self) -> int:
        return 0 if self.num_envs is None else 1


def extras_like(spec: RolloutSpec, state: Any, policy_params: Any) -> dict:
    """Zeros shaped like the policy's extras (stored in random-action batches)."""
    act = spec.act
    if act is None:
        return {}
    shapes = jax.eval_shape(lambda p, o, k, pc: act(p, o, k, pc)[1], policy_params,
                            state.observation, state.key, state.policy_carry)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _like(tree: Any, like: Any) -> Any:
    """``tree`` with ``like``'s dtypes, without weak types (the two branches of a ``cond``)."""
    return jax.tree.map(lambda x, y: jnp.asarray(x, dtype=y.dtype), tree, like)


def _update_at(axis: int, b, x, t):
    """``b`` with ``x`` (``b``'s shape, size 1 on ``axis``) written at ``t`` on ``axis`` (``0 <= t``)."""
    return jax.lax.dynamic_update_slice_in_dim(b, x, t, axis, allow_negative_indices=False)


@functools.cache
def _write_at(axis: int):
    """:func:`_update_at` on ``axis``, kept a ``dynamic_update_slice`` under ``vmap``.

    Why: jax batches ``dynamic_update_slice`` (collectors ``vmap``ped over seeds, as the PPO
    example does) into a ``scatter``, whose index vector and bounds check are ~6 extra kernels
    per step and per leaf shape on XLA:CPU (as much as the policy's forward pass in a small
    rollout). With the time index unbatched (the loop counter) the batched write is a
    ``dynamic_update_slice`` of the batched buffer at index 0 of its new leading axis. Its
    derivatives are ``dynamic_update_slice``'s (``custom_jvp``: forward and reverse mode).
    """
    @jax.custom_batching.custom_vmap
    def write(b, x, t):
        return _update_at(axis, b, x, t)

    @write.def_vmap
    def _rule(size, batched, b, x, t):
        b_b, b_x, b_t = batched
        if b_t:  # a batched index: jax's own rule (a scatter)
            return jax.vmap(functools.partial(_update_at, axis), (0 if b_b else None, 0 if b_x else None, 0))(
                b, x, t), True
        b = b if b_b else jnp.broadcast_to(b, (size,) + b.shape)
        x = x if b_x else jnp.broadcast_to(x, (size,) + x.shape)
        return _write_at(axis + 1)(b, x, t), True

    @jax.custom_jvp
    def write_ad(b, x, t):
        return write(b, x, t)

    @write_ad.defjvp
    def _jvp(primals, tangents):
        b, x, t = primals
        db, dx, _ = tangents
        return write(b, x, t), _update_at(axis, db, dx, t)

    return write_ad


def _write(buf: Any, step: Any, t: jax.Array, axis: int) -> Any:
    """``buf`` (leaves ``[*E, T, ...]``) with one step (leaves ``[*E, ...]``) written at time ``t``."""
    return jax.tree.map(lambda b, x: _write_at(axis)(b, jnp.expand_dims(x, axis).astype(b.dtype), t), buf, step)


def rollout(c: RolloutSpec, state: Any, policy_params: Any, random: bool):
    """``T`` steps from ``state``; returns ``(state, batch)`` with ``batch`` in TorchRL's layout
    (leaves ``[B, T, ...]``, or ``[T, ...]`` for a single env). ``random``: uniform random
    actions (the policy is not called, its carry is not advanced, its extras are zeros)."""
    # env params are compile-time constants of the collector (as in a hand-written
    # rollout closing over them), so XLA can fold what depends only on them
    params = c.env_params
    extras0 = extras_like(c, state, policy_params) if random else None
    opts = c.options
    mf = opts.max_frames
    with_carry = opts.with_carry
    carry0 = c.carry0() if with_carry and c.carry0 is not None else None  # carry0 is set iff with_carry
    transition = c.env_map(c.adapter.transition, (0, 0, 0, c.pax))
    reset = c.env_map(c.adapter.reset, (0, c.pax))
    layout = c.adapter.batch_layout
    if layout is not None:  # one env's step dict in, one env's step dict out
        layout = c.env_map(layout, (0, 0))

    def body(s, _):
        key, k_pol, k_env = jax.random.split(s.key, 3)
        pc = s.policy_carry
        if random:
            action, extras, new_pc = c.random_act(k_pol, params, s.observation), extras0, pc
        else:
            action, extras, new_pc = c.act(policy_params, s.observation, k_pol, pc)
        tr = transition(c.env_keys(k_env), s.env_state, action, params)
        trunc = tr.truncated
        new = {}
        if mf is not None:
            count = s.step_count + 1
            trunc = jnp.logical_or(trunc, count >= mf)
        done = jnp.logical_or(tr.terminated, trunc)
        if mf is not None:
            new["step_count"] = jnp.where(done, 0, count)
        if with_carry:  # an env starting a new episode starts from the initial carry
            new["policy_carry"] = tree_select(done, carry0, new_pc)
        need_reset = jnp.logical_and(done, jnp.logical_not(tr.did_reset))
        reset_obs, reset_state = tr.reset_obs, tr.reset_state
        if c.adapter.reset_on_demand:  # a costly reset runs only on steps where some env ended
            cont = (tr.cont_obs, tr.cont_state)
            reset_obs, reset_state = jax.lax.cond(
                jnp.any(need_reset), lambda k: _like(reset(k, params), cont),
                lambda k: _like(cont, cont), tr.reset_key)
        ret = s.episode_reward + tr.reward
        step = {
            "observation": s.observation,
            "action": action,
            "next": {
                "observation": tr.next_obs,
                "reward": tr.reward,
                "terminated": tr.terminated,
                "truncated": trunc,
                "episode_reward": ret,
            },
            **extras,
        }
        if with_carry and opts.store_carry:
            step["collector"] = {"carry": pc}  # the carry the policy received
        if layout is not None:
            step = layout(step, tr.info)
        new = dataclasses.replace(
            s,
            key=key,
            env_state=tree_select(need_reset, reset_state, tr.cont_state),
            observation=tree_select(need_reset, reset_obs, tr.cont_obs),
            episode_reward=jnp.where(done, 0.0, ret),
            **new,
        )
        return new, step

    slim = dataclasses.replace(state, frames=None, traj_ids=None, next_traj_id=None,
                               step_count=state.step_count if mf is not None else None)
    T = c.T
    axis = c.time_axis  # the time axis of the batch
    # the batch's buffers, shaped from one (traced, not run) step
    _, spec = jax.eval_shape(body, slim, None)
    bufs0 = jax.tree.map(lambda x: jnp.zeros(x.shape[:axis] + (T,) + x.shape[axis:], x.dtype), spec)

    def write_body(carry, t):
        s, bufs = carry
        s, step = body(s, None)
        return (s, _write(bufs, step, t, axis)), None

    (carry, traj), _ = jax.lax.scan(write_body, (slim, bufs0), jnp.arange(T, dtype=jnp.int32))
    traj, (last_ids, next_id, last_count) = add_counters(
        traj, state.traj_ids, state.next_traj_id, state.step_count, time_axis=axis, with_carry=with_carry)
    carry = dataclasses.replace(
        carry,
        frames=saturating_add(state.frames, opts.frames_per_batch),
        traj_ids=last_ids,
        next_traj_id=next_id,
        step_count=last_count,
    )
    return carry, traj
