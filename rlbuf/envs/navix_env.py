"""Navix (``navix.make``) as a gymnax-protocol env for rlbuf's collectors.

Navix's ``Environment.step`` resets lazily: the step *after* a done ``Timestep`` returns the
reset one (an auto-reset where the done step keeps its own observation but the following step
ignores the action). :class:`NavixEnv` steps with Navix's transition (``_step``) and resets
itself, so every stored step is a real transition. ``Timestep.step_type`` gives
``TERMINATION`` / ``TRUNCATION`` (the env's ``max_steps``) apart.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import spaces

from rlbuf.envs._adapter import SuiteEnv


class NavixEnv(SuiteEnv):
    """A Navix env with rlbuf's env protocol.

    Args:
        env: ``navix.make(name, ...)``.
        max_steps_in_episode: an extra time limit on top of Navix's ``max_steps``.

    Observations are Navix's (``observation_fn``: symbolic ``uint8 [H, W, 3]`` by default);
    actions are int32 ``[]`` in ``[0, len(env.action_set))``.
    """

    suite = "navix"

    def __init__(self, env: Any, max_steps_in_episode: int | None = None):
        super().__init__(env, max_steps_in_episode)
        # Navix renders its background tiles into a cache at the first reset and its own step
        # passes that cache on to every later reset; built once here, so a reset inside the
        # collector's step does not re-render it (which made a step ~3x slower)
        self._cache = jax.jit(env.reset)(jax.random.key(0)).state.cache

    def full_timestep(self, ts: Any) -> Any:
        """The adapter's state (a Navix ``Timestep`` without its rendering cache) as Navix's own:
        with the cache put back."""
        return ts.replace(state=ts.state.replace(cache=self._cache))

    def _strip(self, ts):
        # the cache (rendered tiles: ~95% of a Timestep's bytes) is the same constant for every
        # env and step: kept out of the carried state, so it is neither stored per env nor
        # selected at every step between the reset and the continuing state
        return ts.replace(state=ts.state.replace(cache=None))

    def _reset(self, key, inner_params):
        ts = self._env.reset(key, self._cache)
        return ts.observation, self._strip(ts)

    def _step(self, key, ts, action, inner_params):
        ts = self._env._step(self.full_timestep(ts), action)
        return ts.observation, self._strip(ts), ts.reward, ts.is_termination(), ts.is_truncation()

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(len(self._env.action_set), dtype=jnp.int32)


def make_navix(name: str, *, max_steps_in_episode: int | None = None, **kwargs: Any) -> NavixEnv:
    """``navix.make(name, **kwargs)`` (e.g. ``max_steps=50``) as a :class:`NavixEnv`."""
    import navix

    return NavixEnv(navix.make(name, **kwargs), max_steps_in_episode=max_steps_in_episode)
