"""What the multi-agent examples (``ippo.py``, ``vdn.py``) and their benchmark share: the
evaluation of a joint policy straight on a JaxMARL env, and the team return it reports.

The reported return is the **team return**: the sum over agents and steps of the agents'
rewards in one episode. On MPE this is exactly what JaxMARL's baselines log
(``MPELogWrapper`` multiplies each agent's reward by the number of agents and averages over
agents), so our figures and theirs are on the same scale.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def agent_dims(env, agent: str) -> tuple[int, int]:
    """``(number of actions, flat observation size)`` of a JaxMARL ``env``'s ``agent``, whose
    action space must be discrete (the examples' policies are categorical / Q-values)."""
    from jaxmarl.environments.spaces import Box, Discrete, MultiDiscrete

    act, obs = env.action_space(agent), env.observation_space(agent)
    if not isinstance(act, Discrete):
        raise TypeError(f"agent {agent!r} has action space {type(act).__name__}; the example needs Discrete")
    if not isinstance(obs, (Box, Discrete, MultiDiscrete)):
        raise TypeError(f"agent {agent!r} has observation space {type(obs).__name__}; the example needs an array")
    return int(act.n), int(np.prod(obs.shape))


def stack_agents(x: dict, agents) -> jax.Array:
    """``{agent: [n, ...]}`` -> ``[n, A, ...]`` in the order of ``agents``."""
    return jnp.stack([x[a] for a in agents], axis=1)


def team_returns(env, act: Callable, key: jax.Array, n_episodes: int) -> jax.Array:
    """Team returns ``[n_episodes]`` of ``n_episodes`` vmapped episodes of the JaxMARL env ``env``.

    Args:
        env: a JaxMARL ``MultiAgentEnv`` whose agents share observation and action spaces
            (``env.agents`` gives their order; ``env.max_steps`` bounds an episode).
        act: ``act(obs [n_episodes, A, ...], key) -> actions [n_episodes, A]`` (int).
        key: PRNG key of the resets, the env steps and ``act``.
        n_episodes: how many episodes.

    An episode's rewards stop counting at its first ``done["__all__"]`` (the env auto-resets).
    The scan runs ``env.max_steps + 1`` steps: JaxMARL ends an episode when its step counter,
    already at ``max_steps``, is stepped once more (MPE's episodes last 26 steps).
    """
    agents = list(env.agents)
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, n_episodes))

    def body(c, k):
        obs, state, ret, alive = c
        k_act, k_env = jax.random.split(k)
        action = act(stack_agents(obs, agents), k_act)
        actions = {a: action[:, i] for i, a in enumerate(agents)}
        obs, state, reward, done, _ = jax.vmap(env.step)(jax.random.split(k_env, n_episodes), state, actions)
        ret = ret + alive * stack_agents(reward, agents).sum(axis=1)
        return (obs, state, ret, alive & ~done["__all__"]), None

    c0 = (obs, state, jnp.zeros((n_episodes,), jnp.float32), jnp.ones((n_episodes,), bool))
    (_, _, ret, _), _ = jax.lax.scan(body, c0, jax.random.split(k_steps, int(env.max_steps) + 1))
    return ret


def random_act(n_actions: int) -> Callable:
    """``act`` of the uniform random joint policy over ``n_actions`` discrete actions."""
    return lambda obs, key: jax.random.randint(key, obs.shape[:2], 0, n_actions, dtype=jnp.int32)


def random_return(env, key: jax.Array, n_episodes: int) -> float:
    """Mean team return of the uniform random joint policy (the examples' first printed figure)."""
    n_actions = int(env.action_space(env.agents[0]).n)
    return float(jax.jit(lambda k: team_returns(env, random_act(n_actions), k, n_episodes).mean())(key))
