"""Brax through ``rlbuf.envs.make``: final observations, termination vs time limit, traj ids, slices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from suite_checks import B, check_slices, check_suite_batches, collect_batches, replay_by_hand

import rlbuf
from rlbuf.envs import BraxEnv, make

pytest.importorskip("brax")

pytestmark = pytest.mark.slow  # Brax's physics pipeline takes ~30 s to compile on 2 cores

T, LIMIT = 8, 10


def policy(params, obs, key):
    # even envs push right until the pole falls (termination); odd envs act at random and
    # mostly reach the time limit (truncation)
    rand = jax.random.uniform(key, (obs.shape[0], 1), minval=-1.0, maxval=1.0)
    push = (jnp.arange(obs.shape[0]) % 2 == 0)[:, None]
    return jnp.where(push, 1.0, rand * 0.1).astype(jnp.float32)


@pytest.fixture(scope="module")
def run():
    env, params = make("brax:inverted_pendulum", backend="positional", max_steps_in_episode=LIMIT)
    c = rlbuf.Collector(env, policy, frames_per_batch=B * T, num_envs=B, env_params=params)
    states, batches = collect_batches(c, 4)
    return env, states, batches


def test_make_returns_adapter(run):
    env, _, batches = run
    assert isinstance(env, BraxEnv)
    assert env.default_params.max_steps_in_episode == LIMIT
    assert batches[0]["observation"].shape == (B, T, 4)
    assert batches[0]["action"].shape == (B, T, 1)


def test_invariants_and_both_ends(run):
    _, _, batches = run
    r = check_suite_batches(batches)
    nxt = r["next"]
    assert nxt["terminated"].any() and nxt["truncated"].any()
    # the time limit truncates at exactly LIMIT steps
    np.testing.assert_array_equal(nxt["truncated"], r["step_count"] + 1 == LIMIT)


def test_final_observation_is_the_suites(run):
    env, states, batches = run
    raw = env.unwrapped

    def suite_step(state, action):
        state = raw.step(state, action)
        return state.obs, state, state.reward, state.done > 0, False

    assert replay_by_hand(suite_step, states, batches, limit=LIMIT) >= B


def test_slices(run):
    check_slices(run[2])


def test_refuses_training_wrappers():
    from brax import envs

    with pytest.raises(ValueError, match="AutoResetWrapper"):
        BraxEnv(envs.create("fast"))


def test_mjx_backend():
    """An MJX-backed Brax env (``backend="mjx"``) collects with the same guarantees (the by-hand
    replay is the positional test's; MJX compiles slowly, so one small collector only)."""
    env, params = make("brax:inverted_pendulum", backend="mjx", max_steps_in_episode=3)
    c = rlbuf.Collector(env, policy, frames_per_batch=2 * 4, num_envs=2, env_params=params)
    _, batches = collect_batches(c, 2)
    r = check_suite_batches(batches)
    np.testing.assert_array_equal(r["next"]["truncated"], r["step_count"] + 1 == 3)
    assert r["observation"].shape == (2, 8, 4)
