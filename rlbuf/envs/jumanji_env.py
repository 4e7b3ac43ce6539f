"""Jumanji (``jumanji.make``) as a gymnax-protocol env for rlbuf's collectors.

Jumanji signals an episode's end through ``TimeStep.step_type == LAST`` and tells termination
from truncation by the discount: ``discount == 0`` is a termination, a ``LAST`` step with a
non-zero discount a truncation (the env's time limit, ``jumanji.types.truncation``).
Jumanji's ``AutoResetWrapper`` replaces the observation of a ``LAST`` step with the reset one;
:class:`JumanjiEnv` wraps the raw env and keeps the final observation. Observations
(NamedTuples such as Snake's ``Observation(grid, step_count, action_mask)``) become nested dicts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import spaces

from rlbuf.envs._adapter import MultiDiscrete, SuiteEnv

_LAST = 2  # jumanji.types.StepType.LAST


def end_flags(step_type: jax.Array, discount: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(terminated, truncated)`` of a Jumanji ``TimeStep``'s ``step_type`` and ``discount``."""
    last = jnp.asarray(step_type) == _LAST
    discount = jnp.asarray(discount)
    if discount.ndim != 0:
        raise ValueError(f"jumanji: the env's discount has shape {discount.shape}; rlbuf's "
                         "collectors need one scalar discount per step (single-agent envs)")
    stop = discount == 0
    return last & stop, last & ~stop


def space_of_spec(spec: Any) -> spaces.Space:
    """A gymnax space for a Jumanji action spec (Discrete, MultiDiscrete, Bounded, nested)."""
    from jumanji import specs

    if isinstance(spec, specs.DiscreteArray):
        return spaces.Discrete(int(spec.num_values), dtype=jnp.int32)
    if isinstance(spec, specs.MultiDiscreteArray):
        return MultiDiscrete(spec.num_values, spec.dtype)
    if isinstance(spec, specs.BoundedArray):
        return spaces.Box(jnp.asarray(spec.minimum), jnp.asarray(spec.maximum), tuple(spec.shape),
                          spec.dtype)
    if isinstance(spec, specs.Array):
        return spaces.Box(-jnp.inf, jnp.inf, tuple(spec.shape), spec.dtype)
    raise TypeError(f"jumanji: unsupported action spec {type(spec).__name__}")


class JumanjiEnv(SuiteEnv):
    """A Jumanji env (``jumanji.Environment``, unwrapped) with rlbuf's env protocol.

    Args:
        env: the raw env (``jumanji.make(name)``), not one in Jumanji's ``AutoResetWrapper``
            (which loses the final observation).
        max_steps_in_episode: an extra time limit (truncation) on top of the env's own;
            ``None``: only the env's.

    Actions follow ``env.action_spec`` (``DiscreteArray``: int32 ``[]``; ``MultiDiscreteArray``:
    int ``[k]``; ``BoundedArray``: its shape and dtype). The reward is float32 ``[]``.
    """

    suite = "jumanji"

    def __init__(self, env: Any, max_steps_in_episode: int | None = None):
        wrappers = []
        e = env
        while hasattr(e, "_env"):
            wrappers.append(type(e).__name__)
            e = e._env
        resetting = [w for w in wrappers if "AutoReset" in w or "Vmap" in w]
        if resetting:
            raise ValueError(f"JumanjiEnv needs an env without {resetting}: rlbuf resets and "
                             "batches the env itself, keeping the final observation")
        super().__init__(env, max_steps_in_episode)
        self._space = space_of_spec(env.action_spec)

    def _reset(self, key, inner_params):
        state, ts = self._env.reset(key)
        return ts.observation, state

    def _step(self, key, state, action, inner_params):
        state, ts = self._env.step(state, action)
        terminated, truncated = end_flags(ts.step_type, ts.discount)
        return ts.observation, state, ts.reward, terminated, truncated

    def action_space(self, params=None) -> spaces.Space:
        return self._space


def make_jumanji(name: str, *, max_steps_in_episode: int | None = None, **kwargs) -> JumanjiEnv:
    """``jumanji.make(name, **kwargs)`` (e.g. ``num_rows=6`` for Snake) as a :class:`JumanjiEnv`."""
    import jumanji

    return JumanjiEnv(jumanji.make(name, **kwargs), max_steps_in_episode=max_steps_in_episode)
