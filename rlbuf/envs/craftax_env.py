"""Craftax (``craftax.craftax_env.make_craftax_env_from_name``) as a gymnax-protocol env.

Craftax's ``done`` folds three ends together: the time limit (``state.timestep >=
params.max_timesteps``), dying and lava. :class:`CraftaxEnv` keeps them apart: ``terminated``
is the game being over without the time limit, ``truncated`` the time limit. It wraps the
*no-auto-reset* env, so the final observation is the real one; resets are fresh worlds from the
reset key (one world generation per env step, as Craftax's own auto-reset env; Craftax's
optimistic-reset wrapper, which shares fewer resets among many envs, is a batch-level trick
that a per-env collector step does not express).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from gymnax.environments import spaces

from rlbuf.envs._adapter import SuiteEnv

_NEVER = int(jnp.iinfo(jnp.int32).max)


class CraftaxEnv(SuiteEnv):
    """A Craftax env with rlbuf's env protocol.

    Args:
        env: a Craftax env *without* auto-reset (``make_craftax_env_from_name(name,
            auto_reset=False)``).
        max_steps_in_episode: an extra time limit on top of ``params.inner.max_timesteps``.

    ``env_params`` are :class:`~rlbuf.envs._adapter.SuiteParams` whose ``inner`` is Craftax's
    ``EnvParams`` (e.g. ``params.replace(inner=params.inner.replace(max_timesteps=100))``).
    Observations are float32 (symbolic ``[D]`` or pixels ``[H, W, 3]``); actions int32 ``[]``.
    """

    suite = "craftax"

    def __init__(self, env: Any, max_steps_in_episode: int | None = None):
        if "NoAutoReset" not in type(env).__name__:
            raise ValueError(
                f"CraftaxEnv needs a Craftax env without auto-reset (got {type(env).__name__}); "
                "use make_craftax_env_from_name(name, auto_reset=False)"
            )
        super().__init__(env, max_steps_in_episode)

    def _inner_default_params(self):
        return self._env.default_params

    def _reset(self, key, inner_params):
        return self._env.reset_env(key, inner_params)

    def _step(self, key, state, action, inner_params):
        obs, state, reward, _done, _info = self._env.step_env(key, state, action, inner_params)
        # the game is over without the time limit: a termination
        terminated = self._env.is_terminal(state, inner_params.replace(max_timesteps=_NEVER))
        truncated = state.timestep >= inner_params.max_timesteps
        return obs, state, reward, terminated, truncated

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(int(self._env.num_actions), dtype=jnp.int32)


def make_craftax(name: str, *, max_steps_in_episode: int | None = None, **kwargs: Any) -> CraftaxEnv:
    """Craftax env ``name`` (``"Craftax-Symbolic-v1"``, ``"Craftax-Classic-Symbolic-v1"``, the
    pixel variants) as a :class:`CraftaxEnv`; ``kwargs`` go to the env class (e.g.
    ``static_env_params``)."""
    from craftax.craftax_env import make_craftax_env_from_name

    env = make_craftax_env_from_name(name, auto_reset=False)
    if kwargs:
        env = type(env)(**kwargs)
    return CraftaxEnv(env, max_steps_in_episode=max_steps_in_episode)
