"""Craftax through ``rlbuf.envs.make``: time limit as truncation, death as termination, the final
observation the suite's own, traj ids, slices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from suite_checks import B, check_slices, check_suite_batches, collect_batches

import rlbuf
from rlbuf.envs import CraftaxEnv, make

pytest.importorskip("craftax")

pytestmark = pytest.mark.slow  # Craftax's world generation takes minutes to compile on 2 cores

T, MAX_T = 4, 5


@pytest.fixture(scope="module")
def env_params():
    env, params = make("craftax:Craftax-Classic-Symbolic-v1")
    return env, params.replace(inner=params.inner.replace(max_timesteps=MAX_T))


@pytest.fixture(scope="module")
def collected(env_params):
    env, params = env_params
    c = rlbuf.Collector(env, frames_per_batch=B * T, num_envs=B, env_params=params)
    return collect_batches(c, 3)


@pytest.fixture(scope="module")
def run(collected):
    return collected[1]


def test_invariants_and_time_limit(env_params, run):
    env, _ = env_params
    assert isinstance(env, CraftaxEnv)
    r = check_suite_batches(run)
    np.testing.assert_array_equal(r["next"]["truncated"], r["step_count"] + 1 == MAX_T)
    assert r["observation"].dtype == np.float32 and r["action"].dtype == np.int32


def test_step_is_the_suites_from_the_same_state(env_params, collected):
    """The adapter's auto-resetting ``step`` vs Craftax's own ``step_env`` from the same state and
    key: the final observation is the suite's; a dead player is a termination, not truncation."""
    env, params = env_params
    raw = env.unwrapped

    @jax.jit
    def both(key, state, action):
        obs, new, reward, term, trunc, info = env.step(key, state, action, params)
        k_step, _ = jax.random.split(key)  # gymnax 1.0's step: (step, reset) keys
        r_obs, r_state, r_reward, r_done, _ = raw.step_env(k_step, state.inner, action, params.inner)
        return info["final_observation"], obs, reward, term, trunc, r_obs, r_reward, r_done

    # env 0's freshly reset state from the collector's jitted init (an eager ``env.reset`` runs
    # Craftax's world generation op by op: tens of seconds on 2 cores)
    state = jax.tree.map(lambda x: x[0], collected[0][0].env_state)
    for health, t in ((9.0, 0), (0.0, 0), (9.0, MAX_T - 1)):
        inner = state.inner.replace(player_health=jnp.asarray(health, state.inner.player_health.dtype),
                                    timestep=jnp.asarray(t, state.inner.timestep.dtype))
        fin, obs, rew, term, trunc, r_obs, r_rew, r_done = both(
            jax.random.key(2), state.replace(inner=inner, time=jnp.int32(t)), jnp.int32(3))
        np.testing.assert_array_equal(fin, r_obs)
        assert float(rew) == float(r_rew)
        assert bool(term) == (health == 0.0)
        assert bool(trunc) == (t == MAX_T - 1)
        assert bool(r_done) == (bool(term) or bool(trunc))
        if bool(term) or bool(trunc):  # auto-reset: the returned observation is a new world's
            assert not np.array_equal(obs, fin)


def test_slices(run):
    check_slices(run, num_slices=2, slice_len=2)


def test_refuses_auto_reset_env():
    from craftax.craftax_env import make_craftax_env_from_name

    with pytest.raises(ValueError, match="without auto-reset"):
        CraftaxEnv(make_craftax_env_from_name("Craftax-Classic-Symbolic-v1", auto_reset=True))
