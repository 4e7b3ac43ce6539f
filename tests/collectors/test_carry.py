"""Issue 15, the collector part: the policy carry (recurrent state) kept by every collector.

The "policy" counts steps since its carry was reset, so on :class:`GroundTruthEnv` (whose
observation holds the env's own step since its reset) the carry it received, its extras and
``"is_init"`` are known exactly at every step: across batches, episodes, truncations,
``reset_at_each_iter``, random-action batches and a checkpoint round trip.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh

import rlbuf
from rlbuf import checkpoint
from rlbuf.collectors import Collector, MultiSyncCollector
from rlbuf.envs.ground_truth import OBS_STEP

B, T, MF = 3, 5, 4


def init_fn(n):
    lead = () if n is None else (n,)
    return {"count": jnp.zeros(lead, jnp.int32), "h": jnp.zeros(lead + (2,), jnp.float32)}


def counting_policy(params, obs, key, carry):
    count = carry["count"]
    action = (count % 3).astype(jnp.int32)
    new = {"count": count + 1, "h": carry["h"] + jnp.asarray([1.0, -1.0])}
    return action, {"seen": count}, new


def check_carry(r, stored=True):
    """Rows ``r`` (leaves ``[N, T, ...]``) of a counting-policy collector on GroundTruthEnv."""
    step = r["observation"][..., OBS_STEP]
    np.testing.assert_array_equal(r["is_init"], step == 0)
    assert r["is_init"].dtype == np.bool_
    np.testing.assert_array_equal(r["step_count"], step)
    if stored:
        carry = r["collector"]["carry"]
        np.testing.assert_array_equal(carry["count"], step)
        np.testing.assert_array_equal(carry["h"], step[..., None] * np.array([1.0, -1.0]))
    else:
        assert "carry" not in r["collector"]
    np.testing.assert_array_equal(r["seen"], step)
    np.testing.assert_array_equal(r["action"], step % 3)


@pytest.fixture(scope="module")
def plain(gt_env):
    params = gt_env.make_params(B, min_length=2, max_length=6)
    return Collector(gt_env, counting_policy, frames_per_batch=B * T, num_envs=B, env_params=params,
                     max_frames_per_traj=MF, policy_carry=init_fn, store_carry=True)


@pytest.fixture(scope="module")
def plain_collect(plain):
    return jax.jit(plain.collect)


def test_carry_exact_across_batches_and_episodes(plain, plain_collect, checks):
    state, batches = checks.run_batches(plain, 4, fn=plain_collect)
    r = checks.rows(batches, 2)
    checks.ground_truth(r, max_frames_per_traj=MF)
    check_carry(r)
    nxt = r["next"]
    assert nxt["terminated"].any() and nxt["truncated"].any()
    assert (~batches[1]["is_init"][:, 0]).any()  # an episode continued across batches
    # the state's carry is the one the next step receives
    np.testing.assert_array_equal(state.policy_carry["count"], state.step_count)
    assert plain_collect._cache_size() == 1


def test_store_carry_false_and_single_env(gt_env, checks):
    c = Collector(gt_env, counting_policy, frames_per_batch=7, policy_carry=init_fn,
                  env_params=gt_env.default_params.replace(min_length=2, max_length=3))
    _, batches = checks.run_batches(c, 2)
    assert batches[0]["observation"].shape == (7, 4) and batches[0]["is_init"].shape == (7,)
    check_carry(checks.rows(batches, 1), stored=False)


def test_reset_at_each_iter_resets_the_carry(gt_env, checks):
    params = gt_env.make_params(2, min_length=20, max_length=30)
    c = Collector(gt_env, counting_policy, frames_per_batch=8, num_envs=2, env_params=params,
                  reset_at_each_iter=True, policy_carry=init_fn, store_carry=True)
    _, batches = checks.run_batches(c, 3)
    for b in batches:
        assert b["is_init"][:, 0].all() and (b["collector"]["carry"]["count"][:, 0] == 0).all()
        check_carry(b)


def test_random_frames_do_not_advance_the_carry(gt_env, checks):
    params = gt_env.make_params(2, min_length=3, max_length=5)
    c = Collector(gt_env, counting_policy, frames_per_batch=8, num_envs=2, env_params=params,
                  init_random_frames=8, policy_carry=init_fn, store_carry=True)
    _, batches = checks.run_batches(c, 3)
    r = checks.rows(batches, 2)
    np.testing.assert_array_equal(r["is_init"], r["observation"][..., OBS_STEP] == 0)
    assert (r["seen"][:, :4] == 0).all()  # extras are zeros in random batches
    # the carry stays initial through the random batch, then counts from the first policy step
    # (or from the env's next reset, whichever is later)
    want = np.zeros_like(r["step_count"])
    for i in range(want.shape[0]):
        start = 4
        for t in range(4, want.shape[1]):
            start = t if r["is_init"][i, t] else start
            want[i, t] = t - start
    np.testing.assert_array_equal(r["collector"]["carry"]["count"], want)
    np.testing.assert_array_equal(r["seen"][:, 4:], want[:, 4:])
    assert (want[:, 4:] != r["step_count"][:, 4:]).any()  # some env was mid-episode


def test_checkpoint_round_trip(plain, plain_collect, tmp_path):
    state = plain.init(jax.random.key(3))
    for _ in range(2):
        state, _ = plain_collect(state)
    checkpoint.save(tmp_path / "c", state)
    restored = checkpoint.restore(tmp_path / "c", jax.eval_shape(lambda: state))
    jax.tree.map(np.testing.assert_array_equal, restored.policy_carry, state.policy_carry)
    a, b = state, restored
    for _ in range(2):
        a, ba = plain_collect(a)
        b, bb = plain_collect(b)
        jax.tree.map(np.testing.assert_array_equal, ba, bb)
        check_carry(jax.tree.map(np.asarray, ba))


def test_multisync(gt_env, checks):
    W, Bw = 2, 2
    params = jax.tree.map(lambda x: x.reshape(W, Bw), gt_env.make_params(W * Bw, min_length=2, max_length=4))
    calls = []

    def init(n):
        calls.append(n)
        return init_fn(n)

    m = MultiSyncCollector([gt_env] * W, counting_policy, frames_per_batch=W * Bw * T, num_envs=Bw,
                           env_params=params, max_frames_per_traj=3, policy_carry=init, store_carry=True)
    _, batches = checks.run_batches(m, 3)
    assert calls[0] == W * Bw and batches[0]["collector"]["carry"]["h"].shape == (W, Bw, T, 2)
    r = checks.rows(batches, 3)
    checks.ground_truth(r, max_frames_per_traj=3)
    check_carry(r)


def test_sharded_one_device(plain, checks):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    col = rlbuf.shard_collector(plain, mesh)
    state = col.init(jax.random.key(0))
    assert state.policy_carry["h"].shape == (1, B, 2)
    _, batches = checks.run_batches(col, 3)
    r = checks.rows(batches, 2)
    checks.ground_truth(r, max_frames_per_traj=MF)
    check_carry(r)


def test_async_workers(gt_env, checks):
    W, Bw = 2, 2
    params = jax.tree.map(lambda x: x.reshape(W, Bw), gt_env.make_params(W * Bw, min_length=2, max_length=4))
    col = rlbuf.MultiAsyncCollector([gt_env] * W, counting_policy, frames_per_batch=Bw * T, num_envs=Bw,
                                    env_params=params, policy_carry=init_fn, store_carry=True)
    states = col.init(jax.random.key(0))
    collect = jax.jit(col.collect_worker)
    per_worker = {w: [] for w in range(W)}
    for w in [0, 1, 1, 0, 1]:  # workers advance independently
        s_w = jax.tree.map(lambda x: x[w], states)
        s_w, b = collect(s_w, None, w)
        states = jax.tree.map(lambda x, y: x.at[w].set(y), states, s_w)
        per_worker[w].append(jax.tree.map(np.asarray, b))
    for w, batches in per_worker.items():
        assert batches[0]["collector"]["carry"]["count"].shape == (Bw, T)
        check_carry(checks.rows(batches, 2))
    with col.iterate(jax.random.key(1), None, total_frames=4 * Bw * T) as it:
        for _, b in it:
            check_carry(jax.tree.map(np.asarray, b))


@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(num_envs=st.sampled_from([None, 1, 3]), t=st.integers(1, 5), mf=st.sampled_from([None, 2, 3]),
       reset=st.booleans(), seed=st.integers(0, 9))
def test_carry_hypothesis(gt_env, checks, num_envs, t, mf, reset, seed):
    n = 1 if num_envs is None else num_envs
    params = gt_env.default_params if num_envs is None else gt_env.make_params(n)
    params = params.replace(min_length=params.min_length * 0 + 1, max_length=params.max_length * 0 + 4)
    c = Collector(gt_env, counting_policy, frames_per_batch=n * t, num_envs=num_envs, env_params=params,
                  max_frames_per_traj=mf, reset_at_each_iter=reset, policy_carry=init_fn, store_carry=True)
    _, batches = checks.run_batches(c, 3, key=seed)
    check_carry(checks.rows(batches, 1 if num_envs is None else 2))
