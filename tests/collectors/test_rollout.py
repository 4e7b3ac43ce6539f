"""The rollout's two mechanisms that change no data: batches written straight into ``[B, T]``
buffers, and resets computed only on steps where an episode ended (``reset_on_demand``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rlbuf.collectors import Collector
from rlbuf.envs.ground_truth import OBS_STEP, GroundTruthEnv


class OnDemandEnv(GroundTruthEnv):
    """The ground-truth env, declaring its reset costly (as Craftax and Brax adapters do)."""

    reset_on_demand = True


class CountingResets(GroundTruthEnv):
    """Counts (on the host) the reset computations the compiled rollout actually runs."""

    reset_on_demand = True
    calls = 0

    def reset_env(self, key, params):
        # counts env resets whether vmap calls back once per env or once with the whole batch
        jax.debug.callback(type(self)._count, params.env_id)
        return super().reset_env(key, params)

    @classmethod
    def _count(cls, env_ids):
        cls.calls += int(np.size(env_ids))


def _collect(env, num_envs, n=3, mf=None, seed=0, min_length=2, max_length=6):
    lengths = dict(min_length=min_length, max_length=max_length)
    params = env.default_params.replace(**lengths) if num_envs is None else env.make_params(num_envs, **lengths)
    T = 7
    c = Collector(env, frames_per_batch=T * (num_envs or 1), num_envs=num_envs, env_params=params,
                  max_frames_per_traj=mf)
    fn = jax.jit(c.collect)
    state = c.init(jax.random.key(seed))
    out = []
    for _ in range(n):
        state, b = fn(state, None)
        out.append(jax.tree.map(np.asarray, b))
    assert fn._cache_size() == 1
    return out


@pytest.mark.parametrize("num_envs, mf", [(None, None), (5, None), (5, 3)])
def test_reset_on_demand_gives_the_same_batches(checks, num_envs, mf):
    eager = _collect(GroundTruthEnv(num_actions=3), num_envs, mf=mf)
    lazy = _collect(OnDemandEnv(num_actions=3), num_envs, mf=mf)
    for a, b in zip(eager, lazy):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    if num_envs is not None:
        r = checks.rows(lazy, 2)
        checks.ground_truth(r, max_frames_per_traj=mf)
        assert r["next"]["done"].any()
    else:
        assert lazy[0]["observation"].shape == (7, 4)  # [T, ...]: a single env has no env axis


def test_reset_on_demand_skips_steps_without_an_end():
    """Episodes of exactly 4 steps, 2 envs in step: the rollout resets on 1 step in 4."""
    env = CountingResets(num_actions=2)
    CountingResets.calls = 0
    batches = _collect(env, 2, n=2, min_length=4, max_length=4)
    jax.effects_barrier()  # debug callbacks may still be running
    done_steps = sum(int(b["next"]["done"].any(axis=0).sum()) for b in batches)
    assert done_steps == 14 // 4
    # init's reset (vmapped: one callback per env) and one reset per step with an end
    assert CountingResets.calls == 2 * (1 + done_steps)
    np.testing.assert_array_equal(batches[0]["observation"][:, :, OBS_STEP], [[0, 1, 2, 3, 0, 1, 2]] * 2)


@pytest.mark.parametrize("num_envs", [None, 4])
def test_vmapped_collect_writes_in_place_and_equals_each_seed(num_envs):
    """``vmap(collect)`` over seeds (the PPO example's form) gives each seed's own batches, and
    its step writes stay ``dynamic_update_slice``s: jax batches those into ``scatter``s (extra
    index kernels on every step), which the rollout's write avoids."""
    env = GroundTruthEnv(num_actions=3)
    params = env.default_params if num_envs is None else env.make_params(num_envs)
    c = Collector(env, frames_per_batch=5 * (num_envs or 1), num_envs=num_envs, env_params=params)
    states = jax.vmap(c.init)(jax.random.split(jax.random.key(3), 2))
    vcollect = jax.jit(jax.vmap(c.collect, in_axes=(0, None)))
    assert "scatter" not in vcollect.lower(states, None).compile().as_text()
    got = jax.tree.map(np.asarray, vcollect(states, None)[1])
    for i in range(2):
        want = jax.jit(c.collect)(jax.tree.map(lambda x: x[i], states), None)[1]
        jax.tree.map(lambda g, w: np.testing.assert_array_equal(g[i], w), got, want)
