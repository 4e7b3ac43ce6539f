"""The rollout's layout hook (``env.batch_layout(step, info)``): pytree observations and actions,
per-agent data taken from the env's ``info``, and the per-env reward driving ``episode_reward``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import spaces

from rlbuf.collectors import Collector

AGENTS = ("a_0", "a_1")
LENGTH = 3  # every episode terminates after 3 steps


class TwoAgentEnv:
    """Two agents; observation ``{agent: [t, agent index]}``, action ``{agent: Discrete(3)}``;
    agent ``i`` is rewarded its action + i (in ``info``), the env's reward is their sum."""

    default_params = None

    def action_space(self, params=None):
        return spaces.Dict({a: spaces.Discrete(3) for a in AGENTS})

    def _obs(self, t):
        return {a: jnp.stack([t, i]).astype(jnp.float32) for i, a in enumerate(AGENTS)}

    def reset(self, key, params):
        t = jnp.zeros((), jnp.int32)
        return self._obs(t), t

    def step(self, key, t, action, params):
        t = t + 1
        rewards = {a: (action[a] + i).astype(jnp.float32) for i, a in enumerate(AGENTS)}
        reward = sum(rewards.values())
        return self._obs(t), t, reward, t >= LENGTH, jnp.zeros((), bool), {"rewards": rewards}

    def batch_layout(self, step, info):
        """One env's step dict -> TorchRL's multi-agent layout: group ``"agents"`` [A, ...]."""
        stack = lambda d: jnp.stack([d[a] for a in AGENTS])  # noqa: E731
        nxt = step["next"]
        rest = {k: v for k, v in step.items() if k not in ("observation", "action", "next")}
        return {
            **rest,
            "agents": {"observation": stack(step["observation"]), "action": stack(step["action"])},
            "next": {
                "agents": {"observation": stack(nxt["observation"]), "reward": stack(info["rewards"])},
                "reward": nxt["reward"],
                "terminated": nxt["terminated"],
                "truncated": nxt["truncated"],
                "episode_reward": nxt["episode_reward"],
            },
        }


def _policy(params, obs, key):
    # obs: {agent: [B, 2]} -> one action per agent and env, plus an extra
    lead = obs["a_0"].shape[:-1]
    acts = {a: jnp.full(lead, (params + i) % 3, jnp.int32) for i, a in enumerate(AGENTS)}
    return acts, {"value": jnp.ones(lead, jnp.float32)}


@pytest.mark.parametrize("policy", [_policy, None], ids=["policy", "random"])
@pytest.mark.parametrize("num_envs", [None, 2])
def test_layout_hook_groups_agents(policy, num_envs):
    T = 5
    c = Collector(TwoAgentEnv(), policy, frames_per_batch=T * (num_envs or 1), num_envs=num_envs)
    fn = jax.jit(c.collect)
    state = c.init(jax.random.key(0))
    state, b = fn(state, 1)  # the first batch: every episode starts in it
    fn(state, 1)
    assert fn._cache_size() == 1
    b = jax.tree.map(np.asarray, b)
    lead = (T,) if num_envs is None else (num_envs, T)
    assert "observation" not in b and "action" not in b
    assert b["agents"]["observation"].shape == lead + (2, 2)
    assert b["agents"]["action"].shape == lead + (2,)
    assert b["next"]["agents"]["reward"].shape == lead + (2,)
    # per-agent rewards come from info: action + agent index
    np.testing.assert_array_equal(b["next"]["agents"]["reward"], b["agents"]["action"] + np.array([0, 1]))
    np.testing.assert_allclose(b["next"]["reward"], b["next"]["agents"]["reward"].sum(-1))
    if policy is not None:
        np.testing.assert_array_equal(b["agents"]["action"], np.broadcast_to([1, 2], lead + (2,)))
        assert b["value"].shape == lead
    # counters still come from the episode-level flags; episode_reward from the env's reward
    t = b["agents"]["observation"][..., 0, 0]
    np.testing.assert_array_equal(b["step_count"], t)
    np.testing.assert_array_equal(b["next"]["done"], t + 1 == LENGTH)
    ret = np.zeros(lead[:-1])
    for k in range(T):
        ret = np.where(b["step_count"][..., k] == 0, 0.0, ret) + b["next"]["reward"][..., k]
        np.testing.assert_allclose(b["next"]["episode_reward"][..., k], ret)
    ids = b["collector"]["traj_ids"]
    assert ids.shape == lead
