"""Brax (``brax.envs``, including MJX-backed envs) as a gymnax-protocol env for rlbuf's collectors.

Brax's training wrappers do not fit a collector that must store the true final observation:
``AutoResetWrapper`` overwrites ``state.obs`` with the reset observation at a done step, and
``EpisodeWrapper`` folds the time limit into ``done`` (keeping it apart only in
``info["truncation"]``). :class:`BraxEnv` wraps the *raw* env instead and does both itself:
``terminated`` is Brax's ``done`` (the env's own termination), ``truncated`` is the episode limit
(``episode_length`` steps, as ``EpisodeWrapper`` counts them), and resets are fresh ones from
the reset key (Brax's ``AutoResetWrapper`` restarts every episode of an env from one cached
first state, so its episodes of one env all start alike). The adapter sets ``reset_on_demand``:
the collector runs Brax's reset (pipeline init) only on steps where some episode ended, not at
every step under a ``select``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import spaces

from rlbuf.envs._adapter import SuiteEnv

# Brax wrappers that would reset, batch or truncate behind the collector's back
_TRAINING_WRAPPERS = ("EpisodeWrapper", "AutoResetWrapper", "VmapWrapper",
                      "DomainRandomizationVmapWrapper", "EvalWrapper")


class BraxEnv(SuiteEnv):
    """A Brax env (``brax.envs.Env``) with rlbuf's env protocol.

    Args:
        env: the raw env (``brax.envs.get_environment(name)``), not ``brax.envs.create``'s
            wrapped one (its training wrappers are refused, naming them).
        episode_length: Brax's episode limit in physics steps: an episode is truncated after
            ``ceil(episode_length / action_repeat)`` adapter steps. ``None``: no limit.
        action_repeat: each step applies the action this many times and sums the rewards (as
            Brax's ``EpisodeWrapper``).

    Observations are Brax's ``state.obs`` (an array ``[obs_size]`` or a dict of arrays, kept
    as a nested dict); actions are float32 ``[action_size]`` in ``[-1, 1]``.
    """

    suite = "brax"
    reset_on_demand = True  # world generation / pipeline init: skipped on steps where no env ended

    def __init__(self, env: Any, episode_length: int | None = 1000, action_repeat: int = 1):
        chain, e = [], env
        while e is not None:
            chain.append(type(e).__name__)
            e = getattr(e, "env", None) if hasattr(e, "unwrapped") and e is not e.unwrapped else None
        bad = [n for n in chain if n in _TRAINING_WRAPPERS]
        if bad:
            raise ValueError(
                f"BraxEnv needs the raw env (brax.envs.get_environment), got one wrapped in {bad}: "
                "rlbuf applies the episode limit and the resets itself, keeping the final "
                "observation and truncation apart"
            )
        if int(action_repeat) < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        self.action_repeat = int(action_repeat)
        self.episode_length = episode_length
        limit = None if episode_length is None else math.ceil(episode_length / self.action_repeat)
        super().__init__(env, limit)

    def _reset(self, key, inner_params):
        state = self._env.reset(key)
        return state.obs, state

    def _step(self, key, state, action, inner_params):
        env = self._env
        if self.action_repeat == 1:
            state = env.step(state, action)
            reward = state.reward
        else:
            state, rewards = jax.lax.scan(lambda s, _: (env.step(s, action),) * 2, state, None,
                                          length=self.action_repeat)
            reward = jnp.sum(rewards.reward, axis=0)
            state = state.replace(reward=reward)
        terminated = jnp.asarray(state.done) > 0
        return state.obs, state, reward, terminated, jnp.zeros((), bool)

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self._env.action_size,), jnp.float32)

    def observation_space(self, params=None):
        size = self._env.observation_size
        if isinstance(size, dict):
            return spaces.Dict({k: spaces.Box(-jnp.inf, jnp.inf, tuple(jnp.atleast_1d(v)),
                                              jnp.float32) for k, v in size.items()})
        return spaces.Box(-jnp.inf, jnp.inf, (size,), jnp.float32)


def make_brax(name: str, *, episode_length: int | None = 1000, action_repeat: int = 1,
              max_steps_in_episode: int | None = None, **kwargs) -> BraxEnv:
    """``brax.envs.get_environment(name, **kwargs)`` (e.g. ``backend="mjx"``) as a
    :class:`BraxEnv`. ``max_steps_in_episode`` (adapter steps) overrides ``episode_length``."""
    from brax import envs

    if max_steps_in_episode is not None:
        episode_length = int(max_steps_in_episode) * int(action_repeat)
    return BraxEnv(envs.get_environment(name, **kwargs), episode_length=episode_length,
                   action_repeat=action_repeat)
