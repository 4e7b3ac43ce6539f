"""A JaxMARL-style multi-agent env whose observations tell exactly where they come from.

Written against JaxMARL's ``MultiAgentEnv`` protocol (``agents``, ``reset(key)``,
``step_env(key, state, actions)``, ``action_space(agent)``, ``observation_space(agent)``,
``get_avail_actions(state)``, ``max_steps``) without importing JaxMARL, so the MARL layout is
tested wherever rlbuf runs. Wrap it in :class:`rlbuf.envs.JaxMARLEnv`.

Agent ``i``'s observation is ``int32 [i, episode_id, step, length]`` (agents of the class
``"adversary"``, when there are some, observe a fifth entry ``1``):

- ``episode_id``: 31 random bits drawn from the reset key;
- ``step``: steps since the reset; ``length``: the episode's length, uniform in
  ``[min_length, max_length]``.

The episode ends (``__all__``) when ``step == length`` or ``step == max_steps`` (the time
limit: :class:`JaxMARLEnv` calls that a truncation, the former a termination). Agent
``early_agent`` is done from step ``early_step`` on (its ``dones`` entry stays True; it keeps
observing). Agent ``i``'s reward is its action (float32). Available actions: at step ``s``
agent ``i`` may take the actions ``a <= (s + i) % num_actions`` (with ``masks=True``).
Non-agent observation: ``"world_state"`` int32 ``[2] = [episode_id, step]`` (with
``world_state=True``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from gymnax.environments import spaces


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroundTruthMARLState:
    episode_id: jax.Array
    step: jax.Array
    length: jax.Array


class GroundTruthMARLEnv:
    """Ground-truth multi-agent test env (see the module docstring).

    Args:
        agents: agent names (``("adversary_0", "agent_0", "agent_1")`` makes a heterogeneous
            env: adversaries observe 5 values and have ``num_actions + 1`` actions).
        num_actions: actions of the non-adversary agents.
        min_length, max_length: the episode length's range (termination).
        max_steps: the time limit (truncation).
        early_agent, early_step: the agent done early, and from which step on (None: none).
        masks: provide ``get_avail_actions``.
        world_state: add the non-agent observation ``"world_state"``.
    """

    def __init__(self, agents: Sequence[str] = ("agent_0", "agent_1", "agent_2"), *, num_actions: int = 3,
                 min_length: int = 3, max_length: int = 6, max_steps: int = 100,
                 early_agent: str | None = "agent_1", early_step: int = 2, masks: bool = True,
                 world_state: bool = False):
        self.agents = list(agents)
        self.num_agents = len(self.agents)
        self.num_actions = int(num_actions)
        self.min_length, self.max_length, self.max_steps = int(min_length), int(max_length), int(max_steps)
        self.early_agent, self.early_step = early_agent, int(early_step)
        self.masks, self.world_state = bool(masks), bool(world_state)
        if not self.masks:
            # per instance, the env has no masks: wrappers test `get_avail_actions is None`
            self.get_avail_actions = None  # type: ignore[method-assign,assignment]  # hides the method

    def _adversary(self, a: str) -> bool:
        return a.startswith("adversary")

    def n_actions(self, a: str) -> int:
        return self.num_actions + int(self._adversary(a))

    def action_space(self, agent: str) -> spaces.Discrete:
        return spaces.Discrete(self.n_actions(agent))

    def observation_space(self, agent: str) -> spaces.Box:
        return spaces.Box(0, jnp.iinfo(jnp.int32).max, (5 if self._adversary(agent) else 4,), jnp.int32)

    def get_obs(self, state: GroundTruthMARLState) -> dict:
        obs = {}
        for i, a in enumerate(self.agents):
            o = [jnp.int32(i), state.episode_id, state.step, state.length]
            if self._adversary(a):
                o.append(jnp.int32(1))
            obs[a] = jnp.stack(o).astype(jnp.int32)
        if self.world_state:
            obs["world_state"] = jnp.stack([state.episode_id, state.step]).astype(jnp.int32)
        return obs

    def reset(self, key: jax.Array):
        k_id, k_len = jax.random.split(key)
        state = GroundTruthMARLState(
            episode_id=jax.random.randint(k_id, (), 0, jnp.iinfo(jnp.int32).max, jnp.int32),
            step=jnp.zeros((), jnp.int32),
            length=jax.random.randint(k_len, (), self.min_length, self.max_length + 1, jnp.int32))
        return self.get_obs(state), state

    def step_env(self, key: jax.Array, state: GroundTruthMARLState, actions: dict):
        state = dataclasses.replace(state, step=state.step + 1)
        end = (state.step >= state.length) | (state.step >= self.max_steps)
        dones = {a: end | ((a == self.early_agent) & (state.step >= self.early_step)) for a in self.agents}
        dones["__all__"] = end
        rewards = {a: jnp.asarray(actions[a]).astype(jnp.float32) for a in self.agents}
        return self.get_obs(state), state, rewards, dones, {}

    def get_avail_actions(self, state: GroundTruthMARLState) -> dict:
        out = {}
        for i, a in enumerate(self.agents):
            n = self.n_actions(a)
            out[a] = jnp.arange(n) <= (state.step + i) % n
        return out
