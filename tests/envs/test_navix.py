"""Navix through ``rlbuf.envs.make``: real transitions only, final observations, termination
vs truncation from ``Timestep.step_type``, traj ids, slices."""

import numpy as np
import pytest
from suite_checks import B, check_slices, check_suite_batches, collect_batches, replay_by_hand

import rlbuf
from rlbuf.envs import NavixEnv, make

pytest.importorskip("navix")

T, MAX_STEPS = 16, 12


@pytest.fixture(scope="module")
def run():
    env, params = make("navix:Navix-LavaGapS5-v0", max_steps=MAX_STEPS)
    c = rlbuf.Collector(env, frames_per_batch=B * T, num_envs=B, env_params=params)
    states, batches = collect_batches(c, 3)
    return env, states, batches


def test_adapter(run):
    env, _, batches = run
    assert isinstance(env, NavixEnv)
    assert batches[0]["action"].dtype == np.int32
    assert batches[0]["action"].max() < len(env.unwrapped.action_set)


def test_invariants_and_both_ends(run):
    _, _, batches = run
    r = check_suite_batches(batches)
    nxt = r["next"]
    assert nxt["terminated"].any() and nxt["truncated"].any()
    # Navix's own max_steps is the truncation
    np.testing.assert_array_equal(nxt["truncated"], (r["step_count"] + 1 == MAX_STEPS) & ~nxt["terminated"])


def test_final_observation_is_the_suites(run):
    env, states, batches = run
    raw = env.unwrapped

    def suite_step(ts, action):
        ts = raw._step(env.full_timestep(ts), action)  # the adapter's state lacks only the render cache
        return ts.observation, ts, ts.reward, ts.is_termination(), ts.is_truncation()

    assert replay_by_hand(suite_step, states, batches) >= B


def test_slices(run):
    check_slices(run[2])
