"""MultiSyncCollector: worker layout, global trajectory ids, cat_results, per-worker params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.collectors import MultiSyncCollector, MultiSyncDataCollector

W, B, T = 3, 2, 5


@pytest.fixture(scope="module")
def stacked(gt_env, checks):
    params = gt_env.make_params(W * B, min_length=1, max_length=4)
    params = jax.tree.map(lambda x: x.reshape((W, B) + x.shape[1:]), params)  # per env [W, B]
    m = MultiSyncCollector([gt_env] * W, frames_per_batch=W * B * T, num_envs=B,
                           env_params=params, max_frames_per_traj=3)
    _, batches = checks.run_batches(m, 3)
    return m, batches


def test_alias():
    assert MultiSyncDataCollector is MultiSyncCollector


def test_stack_layout_and_global_ids(stacked, checks):
    m, batches = stacked
    assert m.batch_shape == (W, B, T)
    for b in batches:
        assert b["observation"].shape == (W, B, T, 4)
        assert b["collector"]["traj_ids"].shape == (W, B, T)
    np.testing.assert_array_equal(batches[0]["collector"]["traj_ids"][..., 0],
                                  np.arange(W * B).reshape(W, B))
    # worker-major flat env order, one global counter: the numpy reference over W*B rows
    r = checks.rows(batches, 3)
    checks.ground_truth(r, max_frames_per_traj=3)
    np.testing.assert_array_equal(r["observation"][:, 0, 0], np.arange(W * B))  # env_id


@pytest.mark.parametrize("cat", [0, -1])
def test_cat_results(gt_env, stacked, cat):
    m, batches = stacked
    params = jax.tree.map(lambda x: x.reshape((W, B) + x.shape[1:]),
                          gt_env.make_params(W * B, min_length=1, max_length=4))
    mc = MultiSyncCollector([gt_env] * W, frames_per_batch=W * B * T, num_envs=B,
                            env_params=params, max_frames_per_traj=3, cat_results=cat)
    _, b = jax.jit(mc.collect)(mc.init(jax.random.key(0)))
    want = jax.tree.map(lambda x: np.concatenate(list(x), axis=cat % 2), batches[0])
    assert mc.batch_shape == want["action"].shape[:2]
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, b), want)


def test_single_env_workers_and_per_worker_params(gt_env, checks):
    per_worker = [gt_env.default_params.replace(env_id=i, min_length=i + 1, max_length=i + 1)
                  for i in range(W)]
    seen = []

    def policy(p, obs, key):
        seen.append(obs.shape)
        return jnp.zeros(obs.shape[:1], jnp.int32)

    m = MultiSyncCollector([gt_env] * W, policy, frames_per_batch=W * 4, env_params=per_worker)
    _, batches = checks.run_batches(m, 2)
    assert seen[0] == (W, 4)  # one batched policy call over all workers
    b = batches[0]
    assert b["observation"].shape == (W, 4, 4)
    np.testing.assert_array_equal(b["observation"][:, 0, 3], [1, 2, 3])
    checks.ground_truth(checks.rows(batches, 2))


def test_bad_inputs(gt_env):
    with pytest.raises(ValueError, match=r"frames_per_batch=10 .* 3 \* 2 = 6"):
        MultiSyncCollector([gt_env] * 3, frames_per_batch=10, num_envs=2)
    with pytest.raises(ValueError, match="cat_results"):
        MultiSyncCollector([gt_env] * 3, frames_per_batch=6, cat_results=1)
    with pytest.raises(ValueError, match=r"\[W\]=3"):
        MultiSyncCollector([gt_env] * 3, frames_per_batch=6, env_params=gt_env.make_params(4))
