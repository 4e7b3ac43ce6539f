"""``rlbuf.examples._marl``: the team return of the multi-agent examples against a plain Python
loop over a JaxMARL env."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jaxmarl = pytest.importorskip("jaxmarl")

from rlbuf.examples import _marl  # noqa: E402


def test_team_returns_match_a_python_loop():
    """A fixed joint policy (agent i plays action i + 1): the vmapped returns equal the sum over
    agents and steps of the rewards of each episode stepped by hand until ``__all__``, and the
    steps after the episode's end (JaxMARL auto-resets) do not count."""
    env = jaxmarl.make("MPE_simple_spread_v3")
    act = lambda obs, k: jnp.broadcast_to(jnp.arange(1, obs.shape[1] + 1, dtype=jnp.int32), obs.shape[:2])  # noqa
    key = jax.random.key(5)
    got = np.asarray(jax.jit(lambda k: _marl.team_returns(env, act, k, 2))(key))
    k_reset, k_steps = jax.random.split(key)
    step_keys = jax.random.split(k_steps, env.max_steps + 1)
    step = jax.jit(env.step)
    for e, kr in enumerate(jax.random.split(k_reset, 2)):
        _, state = env.reset(kr)
        total, n = 0.0, 0
        for k in step_keys:
            _, k_env = jax.random.split(k)
            actions = {a: jnp.int32(i + 1) for i, a in enumerate(env.agents)}
            _, state, reward, done, _ = step(jax.random.split(k_env, 2)[e], state, actions)
            total += sum(float(reward[a]) for a in env.agents)
            n += 1
            if bool(done["__all__"]):
                break
        assert n == env.max_steps + 1  # MPE's episodes last 26 steps
        np.testing.assert_allclose(got[e], total, rtol=1e-5)


def test_random_return_is_negative_and_reproducible():
    env = jaxmarl.make("MPE_simple_spread_v3")
    a = _marl.random_return(env, jax.random.key(0), 8)
    assert a < 0 and a == _marl.random_return(env, jax.random.key(0), 8)
    assert a != _marl.random_return(env, jax.random.key(1), 8)
