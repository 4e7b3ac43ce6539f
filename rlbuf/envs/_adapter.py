"""The base of every suite adapter: a gymnax (>= 1.0) ``Environment`` around another suite's env.

An adapter implements two suite-specific functions, ``_reset(key, inner_params) -> (obs, inner)``
and ``_step(key, inner, action, inner_params) -> (obs, inner, reward, terminated, truncated)``,
with ``truncated`` the suite's own end-of-time signal (Jumanji's ``LAST`` step with a non-zero
discount, Navix's ``TRUNCATION``). On top, this base adds what a gymnax env has:

- ``reset_env`` / ``step_env`` / ``is_truncated`` (what :class:`rlbuf.Collector` drives: one
  step, one reset where an episode ended, the true final observation at the done step);
- the inherited ``reset(key, params)`` / ``step(key, state, action, params)`` of gymnax 1.0,
  which auto-resets and returns the final observation in ``info["final_observation"]``, with
  ``terminated`` and ``truncated`` apart (``truncated``: the suite's signal or the adapter's
  time limit ``params.max_steps_in_episode``; both flags may be True at once, as in gymnasium);
- ``action_space(params)`` as a gymnax space (``sample(key)`` is jittable).

Observations that are NamedTuples or dataclasses (Jumanji) become nested dicts, so they are
stored under the batch's ``"observation"`` / ``("next", "observation")`` keys like any dict
observation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces

from rlbuf._tree import pytree_dataclass

NO_LIMIT = int(jnp.iinfo(jnp.int32).max)
"""``max_steps_in_episode`` meaning "no limit of the adapter's own" (the suite's may remain)."""


@pytree_dataclass
class SuiteState(environment.EnvState):
    """State of an adapted env.

    Attributes:
        time: int32 ``[]`` steps since the reset (the adapter's time limit counts these).
        inner: the suite's own state (Brax ``State``, Jumanji state, Navix ``Timestep``, ...).
        truncated: bool ``[]`` the suite's own truncation signal at the last step.
    """

    inner: Any
    truncated: jax.Array


@pytree_dataclass
class SuiteParams(environment.EnvParams):
    """Parameters of an adapted env (every field may carry a leading per-env axis).

    Attributes:
        max_steps_in_episode: the adapter's time limit (truncation); :data:`NO_LIMIT` leaves
            only the suite's own.
        inner: the suite's own parameters (Craftax's ``EnvParams``), or None.
    """

    max_steps_in_episode: int = NO_LIMIT
    inner: Any = None


class MultiDiscrete(spaces.Space):
    """Independent discrete choices ``[0, n_i)`` (Jumanji's ``MultiDiscreteArray``)."""

    def __init__(self, num_values, dtype=jnp.int32):
        self.num_values = jnp.asarray(num_values)
        self.shape = tuple(self.num_values.shape)
        self.dtype = jnp.dtype(dtype)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, self.num_values, dtype=self.dtype)

    def contains(self, x: jax.Array) -> jax.Array:
        return jnp.all((x >= 0) & (x < self.num_values))


def as_nested_dict(obs: Any) -> Any:
    """NamedTuples, dataclasses and dicts become (nested) dicts; arrays pass through."""
    if isinstance(obs, dict):
        return {k: as_nested_dict(v) for k, v in obs.items()}
    if isinstance(obs, tuple) and hasattr(obs, "_asdict"):
        return {k: as_nested_dict(v) for k, v in obs._asdict().items()}
    if dataclasses.is_dataclass(obs) and not isinstance(obs, type):
        return {f.name: as_nested_dict(getattr(obs, f.name)) for f in dataclasses.fields(obs)}
    return obs


def scalar_reward(reward: Any, suite: str) -> jax.Array:
    """The step's reward as float32 ``[]``; a per-agent reward cannot be a batch's reward."""
    reward = jnp.asarray(reward)
    if reward.ndim != 0:
        raise ValueError(
            f"{suite}: the env's reward has shape {reward.shape}; rlbuf's collectors store one "
            "scalar reward per step (multi-agent envs: use rlbuf.envs.JaxMARLEnv, which keeps "
            "per-agent rewards in TorchRL's MARL layout)"
        )
    return reward.astype(jnp.float32)


class SuiteEnv(environment.Environment[SuiteState, SuiteParams]):
    """Base of the suite adapters (see the module docstring). Subclasses set ``self._env`` and
    implement ``_reset``, ``_step``, ``action_space`` and, where the suite has params,
    ``_inner_default_params``."""

    suite = "suite"
    reset_on_demand = False
    """True where a reset costs far more than a step: the collector's rollout then computes the
    resets (for all envs at once, from the same keys) only on steps where some episode ended,
    instead of on every step under a ``select`` (see :class:`rlbuf.collectors._env.EnvAdapter`)."""

    def __init__(self, env: Any, max_steps_in_episode: int | None = None):
        super().__init__()
        self._env = env
        limit = NO_LIMIT if max_steps_in_episode is None else int(max_steps_in_episode)
        if limit <= 0:
            raise ValueError(f"max_steps_in_episode must be positive, got {max_steps_in_episode}")
        self._limit = limit

    @property
    def unwrapped(self) -> Any:
        """The suite's own env."""
        return self._env

    # ------------------------------------------------------------- suite-specific
    def _inner_default_params(self) -> Any:
        return None

    def _reset(self, key: jax.Array, inner_params: Any):
        raise NotImplementedError

    def _step(self, key: jax.Array, inner: Any, action: Any, inner_params: Any):
        raise NotImplementedError

    # ------------------------------------------------------------- gymnax protocol
    @property
    def default_params(self) -> SuiteParams:
        return SuiteParams(max_steps_in_episode=self._limit, inner=self._inner_default_params())

    def reset_env(self, key: jax.Array, params: SuiteParams):
        obs, inner = self._reset(key, params.inner)
        state = SuiteState(time=jnp.zeros((), jnp.int32), inner=inner,
                           truncated=jnp.zeros((), bool))
        return as_nested_dict(obs), state

    def step_env(self, key: jax.Array, state: SuiteState, action: Any, params: SuiteParams):
        obs, inner, reward, terminated, truncated = self._step(key, state.inner, action,
                                                               params.inner)
        new = SuiteState(time=state.time + 1, inner=inner, truncated=jnp.asarray(truncated, bool))
        return (as_nested_dict(obs), new, scalar_reward(reward, self.suite),
                jnp.asarray(terminated, bool), {})

    def is_truncated(self, state: SuiteState, params: SuiteParams) -> jax.Array:
        return jnp.logical_or(state.truncated, state.time >= params.max_steps_in_episode)

    def is_terminal(self, state: SuiteState, params: SuiteParams) -> jax.Array:
        raise NotImplementedError(f"{type(self).__name__}: step_env returns termination itself")

    @property
    def name(self) -> str:
        return f"{self.suite}:{type(self._env).__name__}"

    @property
    def num_actions(self) -> int:
        space = self.action_space(self.default_params)
        return int(getattr(space, "n", 0))
