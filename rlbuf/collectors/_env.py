"""The env-protocol adapter: one reset and one step of any supported env, without resets
applied, so the collector sees the true final observation and terminated/truncated apart.

A gymnax (>= 1.0) ``Environment`` subclass is driven through its ``step_env``,
``is_truncated`` (time limit) and ``reset_env``. Any other object needs
``reset(key, params) -> (obs, state)`` and
``step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``
(a 5-tuple ``(obs, state, reward, done, info)`` is read as ``terminated=done``,
``truncated=False``). If ``info`` holds ``"final_observation"`` (gymnax 1.0's ``step`` does),
the env is taken to auto-reset: its returned ``obs``/``state`` are the reset ones and
``info["final_observation"]`` is the true next observation.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def gymnax_environment_class():
    """gymnax's ``Environment`` base class if gymnax is loaded, else None.

    Not imported here: importing gymnax runs JAX computations (starting the backend, after
    which ``jax.distributed.initialize`` refuses to run), and an env that is a gymnax
    ``Environment`` has necessarily loaded it already.
    """
    mod = sys.modules.get("gymnax.environments.environment")
    return None if mod is None else mod.Environment


def strong(x: Any) -> jax.Array:
    """As an array without weak type, so that the state's avals never change between calls
    (a weak-typed leaf in ``init``'s output would make the second ``collect`` retrace)."""
    x = jnp.asarray(x)
    return jnp.asarray(x, dtype=x.dtype)


def tree_select(mask: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Per-env ``where``: ``mask`` is ``[B]`` (or ``[]``), leaves are ``[B, ...]``."""

    def sel(a, b):
        m = mask.reshape(mask.shape + (1,) * (jnp.ndim(b) - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(sel, on_true, on_false)


class Transition(NamedTuple):
    """One env step of one env, no reset applied by the collector yet.

    ``next_obs``: the true next observation (final one at a done step). ``cont_obs`` /
    ``cont_state``: what the env itself continues from (the reset ones if it auto-reset).
    ``did_reset``: the env auto-reset. ``reset_obs`` / ``reset_state``: a fresh reset, used
    where the episode ended and the env did not reset itself (None when the adapter's
    ``reset_on_demand``: the rollout then resets from ``reset_key`` only on steps where some
    env needs it). ``info``: the env step's info pytree when the env defines ``batch_layout``
    (the rollout hands it to that hook), else ``{}`` (nothing extra carried through the loop).
    """

    next_obs: Any
    cont_obs: Any
    cont_state: Any
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    did_reset: jax.Array
    reset_obs: Any
    reset_state: Any
    reset_key: Any = None
    info: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class EnvAdapter:
    """``reset``/``transition`` of one (unbatched) env of any supported protocol."""

    env: Any

    @functools.cached_property
    def reset_on_demand(self) -> bool:
        """The env's reset is costly next to a step (``env.reset_on_demand``: Craftax's world
        generation, Brax's pipeline init): ``transition`` leaves it out and the rollout computes
        it, for all envs at once, only on steps where an episode ended (the same keys, so the
        same data as an eager reset)."""
        return bool(getattr(self.env, "reset_on_demand", False))

    @functools.cached_property
    def batch_layout(self):
        """The env's ``batch_layout(step, info) -> step`` hook, or None (see
        :mod:`rlbuf.collectors._rollout`): how one env's step dict is laid out in the batch
        (e.g. multi-agent groups ``(g, "observation")`` built from dicts of agents)."""
        fn = getattr(self.env, "batch_layout", None)
        return fn if callable(fn) else None

    @functools.cached_property
    def native(self) -> bool:
        """A gymnax ``Environment`` whose ``step`` is gymnax's own (so ``step_env`` is exact)."""
        base = gymnax_environment_class()
        return base is not None and isinstance(self.env, base) and type(self.env).step is base.step

    def reset(self, key, params):
        if self.native:
            return self.env.reset_env(key, params)
        return self.env.reset(key, params)

    def transition(self, key, state, action, params) -> Transition:
        env = self.env
        k_step, k_reset = jax.random.split(key)
        if self.native:
            obs, st, reward, term, info = env.step_env(k_step, state, action, params)
            if hasattr(env, "is_truncated"):
                trunc = env.is_truncated(st, params)
            else:  # gymnax < 1.0: step_env's done includes the time limit
                trunc = st.time >= params.max_steps_in_episode
                term = jnp.logical_and(term, jnp.logical_not(trunc))
            next_obs, did_reset = obs, jnp.zeros((), bool)
        else:
            out = env.step(k_step, state, action, params)
            if len(out) == 6:
                obs, st, reward, term, trunc, info = out
            elif len(out) == 5:
                obs, st, reward, term, info = out
                trunc = jnp.zeros((), bool)
            else:
                raise TypeError(f"env.step must return 5 or 6 values, got {len(out)}")
            if isinstance(info, dict) and "final_observation" in info:
                next_obs = info["final_observation"]
                did_reset = jnp.logical_or(term, trunc)
            else:
                next_obs, did_reset = obs, jnp.zeros((), bool)
        reset_obs = reset_st = None
        if not self.reset_on_demand:
            reset_obs, reset_st = self.reset(k_reset, params)
        return Transition(next_obs, obs, st, jnp.asarray(reward, jnp.float32), jnp.asarray(term, bool),
                          jnp.asarray(trunc, bool), jnp.asarray(did_reset, bool), reset_obs, reset_st, k_reset,
                          info if self.batch_layout is not None else {})
