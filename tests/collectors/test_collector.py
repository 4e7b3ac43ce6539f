"""Collector semantics, checked row by row against the ground-truth env and numpy."""

import dataclasses

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from rlbuf.collectors import Collector, CollectorState, SyncDataCollector

B, T, MF = 3, 7, 4


@pytest.fixture(scope="module")
def gt_collector(gt_env):
    params = gt_env.make_params(B, min_length=2, max_length=6)
    return Collector(gt_env, frames_per_batch=B * T, num_envs=B, env_params=params,
                     max_frames_per_traj=MF)


@pytest.fixture(scope="module")
def gt_collect(gt_collector):
    return jax.jit(gt_collector.collect)


def test_alias():
    assert SyncDataCollector is Collector


def test_invariants_across_batches(gt_collector, gt_collect, checks):
    state, batches = checks.run_batches(gt_collector, 5, fn=gt_collect)
    for b in batches:
        assert b["observation"].shape == (B, T, 4)
        assert b["collector"]["traj_ids"].shape == (B, T)
        assert b["next"]["done"].shape == (B, T)
        assert set(b) == {"observation", "action", "step_count", "next", "collector"}
        assert set(b["next"]) == {"observation", "reward", "terminated", "truncated", "done",
                                  "episode_reward"}
    r = checks.rows(batches, 2)
    checks.ground_truth(r, max_frames_per_traj=MF)
    assert r["next"]["truncated"].any() and r["next"]["terminated"].any()
    # a trajectory running over a batch boundary keeps its id
    last, first = batches[0]["collector"]["traj_ids"][:, -1], batches[1]["collector"]["traj_ids"][:, 0]
    cont = ~batches[0]["next"]["done"][:, -1]
    np.testing.assert_array_equal(first[cont], last[cont])
    assert isinstance(state, CollectorState)
    assert int(state.frames) == 5 * B * T
    assert int(state.next_traj_id) == r["collector"]["traj_ids"].max() + 1


def test_jit_compiles_once(gt_collector, gt_collect, checks):
    checks.run_batches(gt_collector, 3, fn=gt_collect)
    assert gt_collect._cache_size() == 1
    assert hash(gt_collector) == hash(gt_collector)


def test_eager_init_is_one_program_with_the_op_by_op_result(gt_collector):
    """``init`` called eagerly runs jitted (``rlbuf._eager``): the state equals the method run
    primitive by primitive, and a second call reuses the program."""
    jitted = Collector.init.jitted
    s1 = gt_collector.init(jax.random.key(5))
    size = jitted._cache_size()
    s2 = gt_collector.init(jax.random.key(6))
    assert jitted._cache_size() == size
    raw = Collector.init.__wrapped__(gt_collector, jax.random.key(5))
    leaves = lambda s: [jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
                        for x in jax.tree.leaves(s)]
    for a, b in zip(leaves(s1), leaves(raw), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(s1.observation), np.asarray(s2.observation))


def test_collect_inside_scan(gt_collector, gt_collect, checks):
    """``collect`` is pure: scanning it gives the same batches as calling it in a loop."""
    state0 = gt_collector.init(jax.random.key(0))
    _, stacked = jax.jit(lambda s: jax.lax.scan(lambda c, _: gt_collector.collect(c), s, None,
                                                length=3))(state0)
    _, batches = checks.run_batches(gt_collector, 3, fn=gt_collect)
    for i, b in enumerate(batches):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[i], y), stacked, b)


def test_single_env_and_policy_extras(gt_env, checks):
    seen = []

    def policy(params, obs, key):
        seen.append(obs.shape)
        return jnp.int32(params), {"log_prob": jnp.float32(-1.0)}

    c = Collector(gt_env, policy, frames_per_batch=9,
                  env_params=gt_env.default_params.replace(min_length=2, max_length=3))
    _, batches = checks.run_batches(c, 2, policy_params=2)
    assert seen[0] == (4,)  # no leading env axis for a single env
    b = batches[0]
    assert b["observation"].shape == (9, 4) and b["action"].shape == (9,)
    assert (b["action"] == 2).all() and (b["log_prob"] == -1.0).all()
    checks.ground_truth(checks.rows([x for x in batches], 1))


@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(num_envs=st.sampled_from([None, 1, 2, 3]), t=st.integers(1, 5),
       mf=st.sampled_from([None, 2, 3]), terminate=st.booleans(), seed=st.integers(0, 9))
def test_invariants_hypothesis(gt_env, checks, num_envs, t, mf, terminate, seed):
    n = 1 if num_envs is None else num_envs
    params = (gt_env.default_params if num_envs is None else gt_env.make_params(n))
    params = params.replace(min_length=params.min_length * 0 + 1,
                            max_length=params.max_length * 0 + 4,
                            terminate=jnp.full(jnp.shape(params.min_length), terminate))
    c = Collector(gt_env, frames_per_batch=n * t, num_envs=num_envs, env_params=params,
                  max_frames_per_traj=mf)
    _, batches = checks.run_batches(c, 3, key=seed)
    r = checks.rows(batches, 1 if num_envs is None else 2)
    checks.ground_truth(r, max_frames_per_traj=mf, terminate=terminate)


def test_per_env_params(gt_env, checks):
    params = gt_env.make_params(2)
    params = params.replace(min_length=jnp.array([2, 5]), max_length=jnp.array([2, 5]),
                            terminate=jnp.array([True, False]))
    c = Collector(gt_env, frames_per_batch=20, num_envs=2, env_params=params)
    _, batches = checks.run_batches(c, 1)
    b = batches[0]
    assert (b["observation"][0, :, 3] == 2).all() and (b["observation"][1, :, 3] == 5).all()
    assert b["next"]["terminated"][0].sum() == 5 and not b["next"]["truncated"][0].any()
    assert b["next"]["truncated"][1].sum() == 2 and not b["next"]["terminated"][1].any()


def test_init_random_frames(gt_env, checks):
    c = Collector(gt_env, checks.constant_policy(0), frames_per_batch=30, num_envs=3,
                  init_random_frames=31)
    _, batches = checks.run_batches(c, 3, policy_params=2)
    for b in batches[:2]:  # 0 and 30 frames collected before them: random
        assert set(np.unique(b["action"]).tolist()) == {0, 1, 2}
        assert (b["extra"] == 0).all()
    assert (batches[2]["action"] == 2).all() and (batches[2]["extra"] == 1).all()


def test_reset_at_each_iter(gt_env, checks):
    params = gt_env.make_params(2, min_length=20, max_length=30)
    c = Collector(gt_env, frames_per_batch=8, num_envs=2, env_params=params,
                  reset_at_each_iter=True)
    _, batches = checks.run_batches(c, 3)
    seen = set()
    for i, b in enumerate(batches):
        ids = b["collector"]["traj_ids"]
        np.testing.assert_array_equal(ids[:, 0], [2 * i, 2 * i + 1])  # fresh ids each batch
        assert (b["step_count"][:, 0] == 0).all() and (b["observation"][:, 0, 2] == 0).all()
        assert not seen & set(ids.ravel().tolist())
        seen |= set(ids.ravel().tolist())
        checks.ground_truth(b, first_id=2 * i)


def test_postproc(gt_collector, gt_env):
    def postproc(batch):
        return {**batch, "double_reward": 2 * batch["next"]["reward"]}

    c = dataclasses.replace(gt_collector, postproc=postproc)
    _, b = jax.jit(c.collect)(c.init(jax.random.key(0)))
    np.testing.assert_array_equal(b["double_reward"], 2 * b["next"]["reward"])


class CustomEnv:
    """Not a gymnax env: the protocol only. Observations are a dict pytree; an episode lasts
    ``params["length"]`` steps and terminates. ``auto_reset`` mimics gymnax 1.0's ``step``;
    ``five`` returns the old 5-tuple ``(obs, state, reward, done, info)``."""

    def __init__(self, auto_reset: bool, five: bool = False):
        self.auto_reset, self.five = auto_reset, five

    def _obs(self, s):
        return {"pos": s["pos"], "vel": jnp.stack([s["pos"], s["ep"]]).astype(jnp.float32)}

    def reset(self, key, params):
        s = {"pos": jnp.int32(0), "ep": jax.random.randint(key, (), 0, 2**30)}
        return self._obs(s), s

    def step(self, key, state, action, params):
        s = {"pos": state["pos"] + 1, "ep": state["ep"]}
        term = s["pos"] >= params["length"]
        obs, info = self._obs(s), {}
        if self.auto_reset:
            r_obs, r_s = self.reset(key, params)
            info = {"final_observation": obs}
            obs = jax.tree.map(lambda a, b: jnp.where(term, a, b), r_obs, obs)
            s = jax.tree.map(lambda a, b: jnp.where(term, a, b), r_s, s)
        if self.five:
            return obs, s, action.astype(jnp.float32), term, info
        return obs, s, action.astype(jnp.float32), term, jnp.bool_(False), info


@pytest.mark.parametrize("auto_reset,five", [(False, False), (True, False), (False, True)])
def test_custom_env_protocol_and_pytree_obs(checks, auto_reset, five):
    env = CustomEnv(auto_reset, five)

    def policy(params, obs, key):
        return jnp.ones_like(obs["pos"])

    c = Collector(env, policy, frames_per_batch=12, num_envs=2, env_params={"length": 3},
                  max_frames_per_traj=5)
    _, batches = checks.run_batches(c, 2)
    r = checks.rows(batches, 2)
    checks.generic(r)
    nobs, obs, done = r["next"]["observation"], r["observation"], r["next"]["done"]
    assert nobs["vel"].shape == (2, 12, 2)
    np.testing.assert_array_equal(nobs["pos"], obs["pos"] + 1)  # final obs at done steps
    assert (nobs["pos"][done] == 3).all() and (obs["pos"][:, 1:][done[:, :-1]] == 0).all()
    assert done.sum() == 8


def _linear_policy(w, obs, key):
    logits = obs @ w
    return (logits > 0).astype(jnp.int32), {"logits": logits}


@pytest.mark.parametrize("linear", [False, True])
def test_cartpole(checks, linear):
    env, params = gymnax.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=30)
    policy = _linear_policy if linear else None
    w = jnp.array([0.0, 0.0, 1.0, 1.0]) if linear else None
    c = Collector(env, policy, frames_per_batch=4 * 40, num_envs=4, env_params=params,
                  max_frames_per_traj=25 if linear else None)
    _, batches = checks.run_batches(c, 2, policy_params=w)
    r = checks.rows(batches, 2)
    checks.generic(r)
    nobs, obs, nxt = r["next"]["observation"], r["observation"], r["next"]
    x, th = nobs[..., 0], nobs[..., 2]
    fell = (np.abs(x) > params.x_threshold) | (np.abs(th) > params.theta_threshold_radians)
    np.testing.assert_array_equal(nxt["terminated"], fell)  # final observation is kept
    limit = 25 if linear else 30
    np.testing.assert_array_equal(nxt["truncated"], r["step_count"] + 1 == limit)
    assert nxt["truncated"].any() if linear else nxt["terminated"].any()
    resets = obs[:, 1:][nxt["done"][:, :-1]]
    assert (np.abs(resets) <= 0.05).all()
    if linear:
        np.testing.assert_allclose(r["logits"], obs @ np.asarray(w), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(r["action"], r["logits"] > 0)


def test_bad_inputs(gt_env):
    with pytest.raises(ValueError, match=r"frames_per_batch=10 is not divisible by num_envs=3"):
        Collector(gt_env, frames_per_batch=10, num_envs=3)
    with pytest.raises(ValueError, match=r"size \[4\] but num_envs=3"):
        Collector(gt_env, frames_per_batch=9, num_envs=3, env_params=gt_env.make_params(4))
    with pytest.raises(ValueError, match=r"size \[2\] but num_envs=None"):
        Collector(gt_env, frames_per_batch=9, env_params=gt_env.make_params(2))

    def bad_shape(p, obs, key):
        return jnp.zeros((obs.shape[0], 2), jnp.int32)

    c = Collector(gt_env, bad_shape, frames_per_batch=6, num_envs=3)
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(3,\)"):
        jax.eval_shape(c.collect, c.init(jax.random.key(0)))

    def bad_dtype(p, obs, key):
        return jnp.zeros((obs.shape[0],), jnp.float32)

    c = Collector(gt_env, bad_dtype, frames_per_batch=6, num_envs=3)
    with pytest.raises(TypeError, match=r"dtype float32.*int32"):
        jax.eval_shape(c.collect, c.init(jax.random.key(0)))
