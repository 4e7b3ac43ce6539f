"""A gymnax-1.0 environment whose observations tell exactly where they come from.

Each observation is ``int32 [env_id, episode_id, step, length]``:

- ``env_id``: ``params.env_id`` (give each env instance its own, e.g. with a per-env leading
  axis on the params, so trajectories of different envs never share a key);
- ``episode_id``: 31 random bits drawn from the reset key, so ``(env_id, episode_id)``
  identifies an episode (``reset_env`` gets no previous state, so a counter is impossible; two
  episodes of one env collide with probability ~ ``n_episodes**2 / 2**32``);
- ``step``: steps taken since the reset (0 in the reset observation);
- ``length``: the episode's length, drawn uniformly in ``[min_length, max_length]`` at reset.

``step_env`` increments ``step``; the episode ends when ``step == length``: terminated if
``params.terminate`` else truncated. gymnax's time limit ``max_steps_in_episode`` truncates too
(``is_truncated``). The reward of a step is ``1 + action`` (float32), so returns depend on the
policy. The action space is ``Discrete(num_actions)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces

from rlbuf._tree import pytree_dataclass

OBS_ENV_ID, OBS_EPISODE_ID, OBS_STEP, OBS_LENGTH = 0, 1, 2, 3


@pytree_dataclass
class GroundTruthState(environment.EnvState):
    episode_id: jax.Array
    step: jax.Array
    length: jax.Array
    time: jax.Array


@pytree_dataclass
class GroundTruthParams(environment.EnvParams):
    """All fields may carry a per-env leading axis (one parameter set per env)."""

    min_length: int = 3
    max_length: int = 8
    terminate: bool = True
    env_id: int = 0
    max_steps_in_episode: int = 1_000_000


class GroundTruthEnv(environment.Environment[GroundTruthState, GroundTruthParams]):
    """Ground-truth test env (see the module docstring for the observation layout)."""

    def __init__(self, num_actions: int = 3):
        super().__init__()
        self._num_actions = int(num_actions)

    @property
    def default_params(self) -> GroundTruthParams:
        return GroundTruthParams()

    def make_params(self, num_envs: int | None = None, **overrides) -> GroundTruthParams:
        """Params with ``env_id = arange(num_envs)`` and a leading ``[num_envs]`` axis on every
        field (or plain scalars when ``num_envs`` is None)."""
        p = GroundTruthParams(**overrides)
        if num_envs is None:
            return p
        p = jax.tree.map(lambda x: jnp.full((num_envs,), x), p)
        if "env_id" not in overrides:
            p = p.replace(env_id=jnp.arange(num_envs, dtype=jnp.int32))
        return p

    def reset_env(self, key: jax.Array, params: GroundTruthParams):
        k_id, k_len = jax.random.split(key)
        episode_id = jax.random.randint(k_id, (), 0, jnp.iinfo(jnp.int32).max, jnp.int32)
        length = jax.random.randint(
            k_len, (), params.min_length, jnp.asarray(params.max_length) + 1, jnp.int32
        )
        zero = jnp.zeros((), jnp.int32)
        state = GroundTruthState(episode_id=episode_id, step=zero, length=length, time=zero)
        return self.get_obs(state, params), state

    def step_env(self, key: jax.Array, state: GroundTruthState, action, params):
        state = state.replace(step=state.step + 1, time=state.time + 1)
        reward = (1.0 + jnp.asarray(action)).astype(jnp.float32)
        terminated = self.is_terminated(state, params)
        return self.get_obs(state, params), state, reward, terminated, {}

    def get_obs(self, state: GroundTruthState, params=None, key=None) -> jax.Array:
        env_id = jnp.asarray(params.env_id if params is not None else 0, jnp.int32)
        return jnp.stack([env_id, state.episode_id, state.step, state.length]).astype(jnp.int32)

    def is_terminated(self, state: GroundTruthState, params: GroundTruthParams) -> jax.Array:
        return jnp.logical_and(state.step >= state.length, jnp.asarray(params.terminate, bool))

    def is_truncated(self, state: GroundTruthState, params: GroundTruthParams) -> jax.Array:
        ended = jnp.logical_and(
            state.step >= state.length, jnp.logical_not(jnp.asarray(params.terminate, bool))
        )
        return jnp.logical_or(ended, state.time >= params.max_steps_in_episode)

    @property
    def name(self) -> str:
        return "GroundTruth-v0"

    @property
    def num_actions(self) -> int:
        return self._num_actions

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(self._num_actions)

    def observation_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(0, jnp.iinfo(jnp.int32).max, (4,), jnp.int32)
