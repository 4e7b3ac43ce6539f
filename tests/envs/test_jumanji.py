"""Jumanji through ``rlbuf.envs.make``: nested-dict observations, final observations, discount-based
termination vs truncation, traj ids, slices."""

import jax.numpy as jnp
import numpy as np
import pytest
from suite_checks import B, check_slices, check_suite_batches, collect_batches, replay_by_hand

import rlbuf
from rlbuf.envs import JumanjiEnv, make
from rlbuf.envs.jumanji_env import end_flags

pytest.importorskip("jumanji")

T, LIMIT = 8, 9


@pytest.fixture(scope="module")
def run():
    env, params = make("jumanji:Snake-v1", num_rows=5, num_cols=5, max_steps_in_episode=LIMIT)
    c = rlbuf.Collector(env, frames_per_batch=B * T, num_envs=B, env_params=params)
    states, batches = collect_batches(c, 4)
    return env, states, batches


def test_observation_is_a_nested_dict(run):
    env, _, batches = run
    assert isinstance(env, JumanjiEnv)
    obs = batches[0]["observation"]
    assert set(obs) == {"grid", "step_count", "action_mask"}
    assert obs["grid"].shape == (B, T, 5, 5, 5) and obs["action_mask"].shape == (B, T, 4)
    assert set(batches[0]["next"]["observation"]) == set(obs)
    assert batches[0]["action"].dtype == np.int32


def test_invariants_and_both_ends(run):
    _, _, batches = run
    r = check_suite_batches(batches)
    nxt = r["next"]
    assert nxt["terminated"].any() and nxt["truncated"].any()
    # Snake's step_count observation counts from the reset: the episode's own clock
    np.testing.assert_array_equal(r["observation"]["step_count"], r["step_count"])
    np.testing.assert_array_equal(nxt["truncated"] & ~nxt["terminated"],
                                  (r["step_count"] + 1 == LIMIT) & ~nxt["terminated"])


def test_final_observation_is_the_suites(run):
    env, states, batches = run
    raw = env.unwrapped

    def suite_step(state, action):
        state, ts = raw.step(state, action)
        obs = ts.observation._asdict()
        last = ts.step_type == 2
        return obs, state, ts.reward, last & (ts.discount == 0), last & (ts.discount != 0)

    assert replay_by_hand(suite_step, states, batches, limit=LIMIT) >= B


def test_discount_tells_termination_from_truncation():
    last, mid = jnp.int8(2), jnp.int8(1)
    assert tuple(map(bool, end_flags(last, 0.0))) == (True, False)
    assert tuple(map(bool, end_flags(last, 1.0))) == (False, True)
    assert tuple(map(bool, end_flags(mid, 1.0))) == (False, False)
    with pytest.raises(ValueError, match="discount has shape"):
        end_flags(last, jnp.zeros(3))


def test_slices(run):
    check_slices(run[2])


def test_refuses_auto_reset_wrapper():
    import jumanji
    from jumanji.wrappers import AutoResetWrapper

    with pytest.raises(ValueError, match="AutoReset"):
        JumanjiEnv(AutoResetWrapper(jumanji.make("Snake-v1", num_rows=5, num_cols=5)))
