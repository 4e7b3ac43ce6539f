"""``rlbuf.envs.make``: suite dispatch, errors, and the cheap import of rlbuf."""

import subprocess
import sys

import gymnax
import jax
import numpy as np
import pytest
from suite_checks import B, check_slices, check_suite_batches, collect_batches

import rlbuf
from rlbuf.envs import make


def test_gymnax_is_returned_as_is():
    env, params = make("gymnax:CartPole-v1")
    ref_env, ref_params = gymnax.make("CartPole-v1")
    assert type(env) is type(ref_env)
    assert params == ref_params


def test_gymnax_collects():
    env, params = make("gymnax:CartPole-v1")
    c = rlbuf.Collector(env, frames_per_batch=B * 16, num_envs=B, env_params=params)
    _, batches = collect_batches(c, 2)
    r = check_suite_batches(batches)
    assert r["next"]["terminated"].any()
    check_slices(batches)


@pytest.mark.parametrize("spec, match", [
    ("CartPole-v1", "SUITE:NAME"),
    ("nosuch:Env", "unknown env suite"),
    ("gymnasium:CartPole-v1", "HostCollector"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        make(spec)


def test_import_rlbuf_loads_no_suite():
    code = ("import sys, rlbuf; import rlbuf.envs; "
            "print(sorted(m for m in ('brax', 'jumanji', 'navix', 'craftax', 'ale_py', 'torch', 'jaxmarl', "
            "'pettingzoo') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_adapter_time_limit_and_reward_checks():
    from rlbuf.envs._adapter import SuiteEnv, scalar_reward

    with pytest.raises(ValueError, match="reward has shape"):
        scalar_reward(np.zeros(2), "jumanji")
    with pytest.raises(ValueError, match="positive"):
        SuiteEnv(None, max_steps_in_episode=0)
    assert jax.numpy.asarray(scalar_reward(1, "x")).dtype == np.float32
