"""The rollout: one ``lax.scan`` of ``T`` steps of a collector's envs, in TorchRL's layout.

Only what the env dynamics (and the policy's carry) need is carried through the loop, plus
the stored carry's output buffer (written in place, in the batch layout): loop invariants are
closed over, and trajectory ids and step counts (pure functions of the done
flags) are computed after it with a few vectorized ops (:mod:`rlbuf.collectors._counters`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from rlbuf.collectors._counters import saturating_add, step_counts, traj_ids
from rlbuf.collectors._env import tree_select

if TYPE_CHECKING:
    from rlbuf.collectors.collector import Collector, CollectorState


def extras_like(c: "Collector", state: "CollectorState", policy_params: Any) -> dict:
    """Zeros shaped like the policy's extras (stored in random-action batches)."""
    if c.policy is None:
        return {}
    shapes = jax.eval_shape(lambda p, o, k, pc: c._call_policy(p, o, k, pc)[1], policy_params,
                            state.observation, state.key, state.policy_carry)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def rollout(c: "Collector", state: "CollectorState", policy_params: Any, random: bool):
    """``T`` steps from ``state``; returns ``(state, traj, carry)`` with ``traj`` time-major
    (leaves ``[T, *E, ...]``) and ``carry`` the carry the policy received at each step, already
    in the batch layout (leaves ``[*E, T, ...]``; None without ``store_carry``). ``random``:
    uniform random actions (the policy is not called, its carry is not advanced, its extras
    are zeros)."""
    # env params are compile-time constants of the collector (as in a hand-written
    # rollout closing over them), so XLA can fold what depends only on them
    params = c._params
    extras0 = extras_like(c, state, policy_params) if random else None
    mf = c._max_frames
    with_carry = c.policy_carry is not None
    carry0 = c._carry0() if with_carry else None
    store = with_carry and c.store_carry
    # The stored carry (the largest leaf with a recurrent policy) is written in place at time t
    # of a [*E, T, ...] buffer carried through the loop: stacking it [T, *E, ...] and
    # transposing it afterwards, like the other leaves, cost a whole extra pass over it.
    t_axis = len(c._lead)
    if store:
        buf0 = jax.tree.map(lambda x: jnp.zeros(x.shape[:t_axis] + (c._T,) + x.shape[t_axis:], x.dtype), carry0)
    transition = c._env_map(c._adapter.transition, (0, 0, 0, c._pax))

    def body(sb, t):
        s, buf = sb
        key, k_pol, k_env = jax.random.split(s.key, 3)
        pc = s.policy_carry
        if random:
            action, extras, new_pc = c._random_actions(k_pol, params), extras0, pc
        else:
            action, extras, new_pc = c._call_policy(policy_params, s.observation, k_pol, pc)
        tr = transition(c._env_keys(k_env), s.env_state, action, params)
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
        if store:  # the carry the policy received
            buf = jax.tree.map(lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, t, t_axis), buf, pc)
        new = dataclasses.replace(
            s,
            key=key,
            env_state=tree_select(need_reset, tr.reset_state, tr.cont_state),
            observation=tree_select(need_reset, tr.reset_obs, tr.cont_obs),
            episode_reward=jnp.where(done, 0.0, ret),
            **new,
        )
        return (new, buf), step

    slim = dataclasses.replace(state, frames=None, traj_ids=None, next_traj_id=None,
                               step_count=state.step_count if mf is not None else None)
    (carry, stored), traj = jax.lax.scan(body, (slim, buf0 if store else None), jnp.arange(c._T, dtype=jnp.int32))
    nxt = traj["next"]
    done = jnp.logical_or(nxt["terminated"], nxt["truncated"])
    traj["next"] = {**nxt, "done": done}
    ids, last_ids, next_id = traj_ids(done, state.traj_ids, state.next_traj_id)
    counts, last_count = step_counts(done, state.step_count)
    traj["step_count"] = counts
    traj["collector"] = {"traj_ids": ids}
    if with_carry:
        traj["is_init"] = counts == 0
    carry = dataclasses.replace(
        carry,
        frames=saturating_add(state.frames, c.frames_per_batch),
        traj_ids=last_ids,
        next_traj_id=next_id,
        step_count=last_count,
    )
    return carry, traj, stored
