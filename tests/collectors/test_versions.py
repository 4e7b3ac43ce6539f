"""Policy-version stamps (issue 28): ``collect(..., policy_version=v)`` stores ``v`` at
``("collector", "policy_version")`` int32 over the batch dims, traced (no recompilation), absent
when not given; ``iterate`` and the async collector's iterator increment it with new params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlbuf
from rlbuf.collectors import Collector, MultiSyncCollector, iterate

T = 4


def version_policy(params, obs, key):
    """Acts ``params`` everywhere: the stored action says which parameters acted."""
    return jnp.full(obs.shape[:-1], params, jnp.int32)


@pytest.fixture(scope="module")
def collectors(gt_env):
    return {
        "single": Collector(gt_env, version_policy, frames_per_batch=T),
        "batched": Collector(gt_env, version_policy, frames_per_batch=2 * T, num_envs=2,
                             env_params=gt_env.make_params(2)),
        "multi": MultiSyncCollector([gt_env] * 2, version_policy, frames_per_batch=4 * T, num_envs=2),
    }


@pytest.mark.parametrize("name, shape", [("single", (T,)), ("batched", (2, T)), ("multi", (2, 2, T))])
def test_stamp_shape_dtype_and_no_recompilation(collectors, name, shape):
    c = collectors[name]
    fn = jax.jit(c.collect)
    state = c.init(jax.random.key(0))
    state, plain = fn(state, 0)
    assert "policy_version" not in plain["collector"]  # absent when not given
    for v in (3, 7, 2**20):
        state, b = fn(state, 0, policy_version=jnp.int32(v))
        pv = np.asarray(b["collector"]["policy_version"])
        assert pv.shape == shape == c.batch_shape and pv.dtype == np.int32
        np.testing.assert_array_equal(pv, v)
    assert fn._cache_size() == 2  # one program without versions, one for every version


def test_stamp_refuses_a_non_integer_version(collectors):
    c = collectors["single"]
    with pytest.raises(TypeError, match="policy_version"):
        c.collect(c.init(jax.random.key(0)), 0, policy_version=1.5)


def test_iterate_increments_versions(collectors):
    c = collectors["batched"]
    it = iterate(c, jax.random.key(0), 10, policy_version=0)
    seen = []
    for k in range(4):
        b = next(it)
        seen.append(int(b["collector"]["policy_version"][0, 0]))
        np.testing.assert_array_equal(b["action"], 10 + k // 2)  # the params of that version acted
        if k % 2:
            it.update_policy_params(10 + k // 2 + 1)
    assert seen == [0, 0, 1, 1] and it.policy_version == 2
    assert it._collect._cache_size() == 1
    assert "policy_version" not in next(iterate(c, jax.random.key(0), 0))["collector"]  # opt-in


def test_async_versions_exact_per_worker(gt_env):
    """Each batch reports the version of the parameters its worker used: the action (= the
    params) equals the version's params in every step, and each worker's versions never go
    back, though a worker mid-batch finishes with the parameters it started with."""
    W = 3
    col = rlbuf.MultiAsyncCollector([gt_env] * W, version_policy, frames_per_batch=2 * T, num_envs=2)
    per_worker = {w: [] for w in range(W)}
    with col.iterate(jax.random.key(0), 100, total_frames=24 * 2 * T) as it:
        for i, (w, b) in enumerate(it):
            pv = np.asarray(b["collector"]["policy_version"])
            assert pv.shape == (2, T) and pv.dtype == np.int32
            v = int(pv[0, 0])
            np.testing.assert_array_equal(pv, v)
            np.testing.assert_array_equal(np.asarray(b["action"]), 100 + v)  # params of version v
            per_worker[w].append(v)
            if i % 2:
                it.update_policy_params(100 + it.policy_version + 1)
    assert it.policy_version == 12
    for w, vs in per_worker.items():
        assert vs == sorted(vs), (w, vs)
    assert max(max(vs) for vs in per_worker.values() if vs) >= 10  # the new params reached the workers


def test_host_collector_stamps_versions():
    gym = pytest.importorskip("gymnasium")
    envs = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")

    def policy(params, obs, key):
        return jnp.zeros(obs.shape[:1], jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) + params

    hc = rlbuf.HostCollector(envs, policy, frames_per_batch=2 * T)
    try:
        it = iterate(hc, jax.random.key(0), 0, policy_version=5)
        b = next(it)
        np.testing.assert_array_equal(np.asarray(b["collector"]["policy_version"]), np.full((2, T), 5))
        it.update_policy_params(1)
        b = next(it)
        np.testing.assert_array_equal(np.asarray(b["collector"]["policy_version"]), 6)
        np.testing.assert_array_equal(np.asarray(b["action"]), 1)
        state, b = hc.collect(it.state, 0)
        assert "policy_version" not in b["collector"]
    finally:
        hc.close()
