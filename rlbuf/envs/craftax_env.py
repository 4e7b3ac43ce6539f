"""Craftax (``craftax.craftax_env.make_craftax_env_from_name``) as a gymnax-protocol env.

Craftax's ``done`` folds three ends together: the time limit (``state.timestep >=
params.max_timesteps``), dying and lava. :class:`CraftaxEnv` keeps them apart: ``terminated``
is the game being over without the time limit, ``truncated`` the time limit. It wraps the
*no-auto-reset* env, so the final observation is the real one; resets are fresh worlds from the
reset key.

Resets and their cost: world generation costs far more than a step, and Craftax's own
auto-reset env generates a world for every env at every step (kept only where the episode
ended, under a ``select``). The adapter sets ``reset_on_demand``, so the collector's rollout
generates worlds (for all envs at once, from the same per-env keys, so the data is the same)
only on steps where some episode ended. Craftax's *optimistic* resets
(``OptimisticResetVecEnvWrapper``, in Craftax_Baselines' ``wrappers.py``, not in the ``craftax``
package) go further at many envs: ``num_envs // reset_ratio`` worlds per step, each ended env
taking one of them at random, so envs ending together may share a world. rlbuf does not do that:
it would make envs of one batch dependent and is a batch-level trick a per-env adapter cannot
express; with few envs (episodes last hundreds of steps) on-demand resets skip world generation
on almost every step, which is what the optimistic wrapper is for.
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
    reset_on_demand = True  # world generation / pipeline init: skipped on steps where no env ended

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
