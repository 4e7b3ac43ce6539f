"""``HostCollector`` on gymnasium vector envs (sync and async, every autoreset mode): the batch
contract of ``Collector``, checked row by row against a gymnasium env whose observations encode
``[env_id, episode, step, length]``."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlbuf
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.collectors.host import HostCollector, HostCollectorState, make_groups
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

B, T, LIMIT = 4, 6, 5  # envs, steps per batch, TimeLimit of every episode
ENV_ID, EPISODE, STEP, LENGTH = range(4)


class CountingEnv(gym.Env):
    """Observation ``int32 [env_id, episode, step, length]``: ``episode`` is drawn at reset,
    ``length`` in ``[2, 7]``; the episode terminates when ``step == length`` (so a length above
    ``LIMIT`` ends by ``TimeLimit`` truncation). Reward ``1 + action``."""

    observation_space = gym.spaces.Box(0, np.iinfo(np.int32).max, (4,), np.int32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, env_id=0):
        self.env_id = env_id

    def _obs(self):
        return np.array([self.env_id, self.episode, self.t, self.length], np.int32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = int(self.np_random.integers(1, 2**31 - 1))
        self.length = int(self.np_random.integers(2, 8))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0 + float(action), self.t >= self.length, False, {}


def make_vec(mode="sync", autoreset="NextStep", num=B, first_id=0):
    fns = [lambda i=i: gym.wrappers.TimeLimit(CountingEnv(first_id + i), LIMIT) for i in range(num)]
    cls = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
    return cls(fns, autoreset_mode=gym.vector.AutoresetMode(autoreset))


def policy(params, obs, key):
    # depends on the observation, so a wrong observation shows in actions and rewards
    action = ((obs[:, STEP] + obs[:, ENV_ID] + params) % 3).astype(jnp.int32)
    return action, {"log_prob": -jnp.ones(obs.shape[0], jnp.float32)}


def ids_shape(r):
    return r["collector"]["traj_ids"].shape


def check_host(r, max_frames_per_traj=None, first_id=0, fresh_start=True):
    """Every invariant of the Collector tests on rows ``r`` of the counting env."""
    CHECKS.generic(r, first_id)
    obs, nobs, nxt = r["observation"], r["next"]["observation"], r["next"]
    done, term, trunc = nxt["done"], nxt["terminated"], nxt["truncated"]
    # the next observation is the true successor, also at done steps (final observation)
    np.testing.assert_array_equal(nobs[..., [ENV_ID, EPISODE, LENGTH]], obs[..., [ENV_ID, EPISODE, LENGTH]])
    np.testing.assert_array_equal(nobs[..., STEP], obs[..., STEP] + 1)
    # after a done step: a reset observation of a new episode
    after = done[:, :-1]
    assert (obs[:, 1:][after][:, STEP] == 0).all()
    assert (obs[:, 1:][after][:, EPISODE] != obs[:, :-1][after][:, EPISODE]).all()
    if fresh_start:
        np.testing.assert_array_equal(r["step_count"], obs[..., STEP])
    np.testing.assert_array_equal(term, nobs[..., STEP] == nobs[..., LENGTH])
    limit = nobs[..., STEP] == LIMIT
    if max_frames_per_traj is not None:
        limit |= r["step_count"] + 1 == max_frames_per_traj
        assert r["step_count"].max() < max_frames_per_traj
    np.testing.assert_array_equal(trunc, limit)
    np.testing.assert_array_equal(nxt["reward"], 1.0 + r["action"])
    # each row is one env; one trajectory id per episode and vice versa
    np.testing.assert_array_equal(obs[..., ENV_ID], np.broadcast_to(np.arange(obs.shape[0])[:, None], ids_shape(r)))
    ids = r["collector"]["traj_ids"]
    key = obs[..., ENV_ID].astype(np.int64) * (1 << 32) + obs[..., EPISODE]
    pairs = set(zip(ids.ravel().tolist(), key.ravel().tolist()))
    assert len(pairs) == len(np.unique(ids)) == len(np.unique(key))
    assert term.any() and trunc.any()


def run(hc, n, params=None, key=0):
    state = hc.init(jax.random.key(key))
    batches = []
    for _ in range(n):
        state, b = hc.collect(state, params)
        batches.append(jax.tree.map(np.asarray, b))
    return state, batches


CHECKS = None


@pytest.fixture(autouse=True)
def _checks(checks):
    """The Collector tests' invariant checkers (a fixture of tests/collectors/conftest.py)."""
    global CHECKS
    CHECKS = checks


MODES = [(m, a) for m in ("sync", "async") for a in ("NextStep", "SameStep", "Disabled")]


@pytest.mark.parametrize("mode, autoreset", MODES)
def test_invariants_every_vector_env(mode, autoreset):
    hc = HostCollector(make_vec(mode, autoreset), policy, frames_per_batch=B * T)
    try:
        state, batches = run(hc, 4, params=1)
    finally:
        hc.close()
    for b in batches:
        assert b["observation"].shape == (B, T, 4) and b["observation"].dtype == np.int32
        assert set(b) == {"observation", "action", "step_count", "next", "collector", "log_prob"}
        assert set(b["next"]) == {"observation", "reward", "terminated", "truncated", "done",
                                  "episode_reward"}
        assert b["action"].dtype == np.int32 and b["log_prob"].shape == (B, T)
    r = CHECKS.rows(batches, 2)
    check_host(r)
    np.testing.assert_array_equal(r["action"], (r["observation"][..., STEP] + r["observation"][..., ENV_ID] + 1) % 3)
    # a trajectory running over a batch boundary keeps its id
    for x, y in zip(batches[:-1], batches[1:]):
        cont = ~x["next"]["done"][:, -1]
        np.testing.assert_array_equal(y["collector"]["traj_ids"][:, 0][cont], x["collector"]["traj_ids"][:, -1][cont])
    assert isinstance(state, HostCollectorState)
    assert int(state.frames) == 4 * B * T
    assert int(state.next_traj_id) == B + r["next"]["done"].sum()  # one id per reset


def test_same_data_as_collector_semantics_with_options():
    """max_frames_per_traj, random policy, init_random_frames (zero extras), postproc."""
    hc = HostCollector(make_vec(), policy, frames_per_batch=B * T, max_frames_per_traj=3,
                       init_random_frames=2 * B * T, postproc=lambda b: {**b, "seen": b["step_count"] * 0 + 1})
    _, batches = run(hc, 4, params=0)
    r = CHECKS.rows(batches, 2)
    check_host(r, max_frames_per_traj=3)
    for i, b in enumerate(batches):
        assert (b["seen"] == 1).all()
        np.testing.assert_array_equal(b["log_prob"], 0.0 if i < 2 else -1.0)
    hc = HostCollector(make_vec(), frames_per_batch=B * T)
    _, batches = run(hc, 3)
    check_host(CHECKS.rows(batches, 2))
    assert "log_prob" not in batches[0]


def test_reset_at_each_iter():
    hc = HostCollector(make_vec(), policy, frames_per_batch=B * T, reset_at_each_iter=True)
    _, batches = run(hc, 3, params=0)
    first = 0
    for b in batches:
        CHECKS.generic(CHECKS.rows([b], 2), first)
        assert (b["step_count"][:, 0] == 0).all()
        np.testing.assert_array_equal(b["collector"]["traj_ids"][:, 0], first + np.arange(B))
        # envs that ended at the last step took ids that the reset at the next batch leaves unused
        first = int(b["collector"]["traj_ids"].max()) + 1 + int(b["next"]["done"][:, -1].sum())


def test_groups_alternate_and_number_envs_in_order():
    groups = make_groups(lambda n: make_vec("async", "SameStep", num=n), B, 2)
    # the second group's envs are numbered after the first's
    groups[1].close()
    groups[1] = make_vec("async", "SameStep", num=B // 2, first_id=B // 2)
    hc = HostCollector(groups, policy, frames_per_batch=B * T)
    try:
        _, batches = run(hc, 3, params=2)
    finally:
        hc.close()
    check_host(CHECKS.rows(batches, 2))


def test_iterate_and_stale_state():
    hc = HostCollector(make_vec(), policy, frames_per_batch=B * T)
    it = rlbuf.iterate(hc, jax.random.key(0), 0, total_frames=3 * B * T)
    batches = [jax.tree.map(np.asarray, b) for b in it]
    assert len(batches) == 3 and it.frames == 3 * B * T
    check_host(CHECKS.rows(batches, 2))
    stale = hc.init(jax.random.key(1))
    hc.collect(stale, 0)
    with pytest.raises(ValueError, match="each state can be used once"):
        hc.collect(stale, 0)
    # a restored state resumes: counters and ids continue, new episodes start
    state = hc.resume(stale)
    state, b = hc.collect(state, 0)
    assert b["collector"]["traj_ids"].min() >= int(stale.next_traj_id)
    assert (np.asarray(b["step_count"])[:, 0] == 0).all()


def test_bad_policies_and_sizes():
    with pytest.raises(ValueError, match="not divisible"):
        HostCollector(make_vec(), policy, frames_per_batch=B * T + 1)
    bad = HostCollector(make_vec(), lambda p, o, k: (jnp.zeros(B, jnp.int32), {"next": o}), frames_per_batch=B * T)
    with pytest.raises(ValueError, match="'next' clashes"):
        bad.collect(bad.init(jax.random.key(0)))
    bad = HostCollector(make_vec(), lambda p, o, k: jnp.zeros((B, 2), jnp.int32), frames_per_batch=B * T)
    with pytest.raises(ValueError, match="shape"):
        bad.collect(bad.init(jax.random.key(0)))


def test_slices_from_ndim2_storage():
    hc = HostCollector(make_vec("sync", "SameStep"), policy, frames_per_batch=B * T)
    _, batches = run(hc, 4, params=0)
    rb = ReplayBuffer(storage=LazyTensorStorage(B * T * 4, ndim=2),
                      sampler=SliceSampler(num_slices=4, traj_key=("collector", "traj_ids")), batch_size=8)
    state = rb.init(batches[0])
    for b in batches:
        state = rb.add(state, b)
    for s in range(5):
        state, sample, info = rb.sample(state, jax.random.key(s))
        obs = np.asarray(sample["observation"])
        assert (obs[..., EPISODE] == obs[:, :1, EPISODE]).all()
        assert (np.diff(obs[..., STEP], axis=1) == 1).all()
        np.testing.assert_array_equal(np.asarray(state.storage["observation"][info["index"]]), obs)


def counting_policy(params, obs, key, carry):
    """Its carry counts the steps since the episode's start (it is reset to 0 at each start)."""
    action = (obs[:, STEP] % 3).astype(jnp.int32)
    return action, {"seen": carry["count"]}, {"count": carry["count"] + 1}


def count_carry(n):
    return {"count": jnp.zeros((n,), jnp.int32)}


@pytest.mark.parametrize("groups", [1, 2])
def test_policy_carry_is_init_and_stored_carry(groups):
    env = make_vec() if groups == 1 else [make_vec(num=B // 2), make_vec(num=B // 2, first_id=B // 2)]
    hc = HostCollector(env, counting_policy, frames_per_batch=B * T, policy_carry=count_carry, store_carry=True)
    state, batches = run(hc, 4)
    r = CHECKS.rows(batches, 2)
    check_host(r)
    np.testing.assert_array_equal(r["is_init"], r["step_count"] == 0)
    np.testing.assert_array_equal(r["collector"]["carry"]["count"], r["step_count"])
    np.testing.assert_array_equal(r["seen"], r["step_count"])
    assert hc._policy_step._cache_size() == 1  # one compiled policy step for every batch and group
    # the state's carry is the next step's: already reset where the last step ended an episode
    np.testing.assert_array_equal(np.asarray(state.policy_carry["count"]), state.step_count)
    # a resumed state (checkpoint restore) restarts every carry with the new episodes
    state = hc.resume(state)
    state, b = hc.collect(state, None)
    np.testing.assert_array_equal(np.asarray(b["collector"]["carry"]["count"]), np.asarray(b["step_count"]))


def test_policy_carry_random_frames_and_reset_at_each_iter():
    hc = HostCollector(make_vec(), counting_policy, frames_per_batch=B * T, policy_carry=count_carry,
                       store_carry=True, init_random_frames=B * T, reset_at_each_iter=True)
    _, batches = run(hc, 3)
    # random batch: the policy is not called, its carry not advanced, its extras zeros
    np.testing.assert_array_equal(batches[0]["collector"]["carry"]["count"], 0)
    np.testing.assert_array_equal(batches[0]["seen"], 0)
    for b in batches[1:]:  # every batch starts fresh: the carry counts steps exactly
        np.testing.assert_array_equal(b["collector"]["carry"]["count"], b["step_count"])
        np.testing.assert_array_equal(b["is_init"], b["step_count"] == 0)
    with pytest.raises(ValueError, match="store_carry=True needs policy_carry"):
        HostCollector(make_vec(), policy, frames_per_batch=B * T, store_carry=True)
    bad = HostCollector(make_vec(), lambda p, o, k, c: (jnp.zeros(B, jnp.int32), {}, {"count": c["count"] * 1.0}),
                        frames_per_batch=B * T, policy_carry=count_carry)
    with pytest.raises(ValueError, match="carry leaf"):
        bad.collect(bad.init(jax.random.key(0)))


def test_checkpoint_round_trip_and_resume(tmp_path):
    """A HostCollectorState (host counters, current observations, device carry) round-trips
    through rlbuf.checkpoint; resume() restarts the envs and continues ids and frame counts."""
    pytest.importorskip("orbax.checkpoint")
    from rlbuf import checkpoint

    hc = HostCollector(make_vec(), counting_policy, frames_per_batch=B * T, policy_carry=count_carry,
                       store_carry=True)
    state, _ = run(hc, 2)
    checkpoint.save(tmp_path / "ckpt", state)
    restored = checkpoint.restore(tmp_path / "ckpt", state)
    def arr(x):
        x = jnp.asarray(x)
        return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(arr(x), arr(y)), restored, state)
    fresh = HostCollector(make_vec(), counting_policy, frames_per_batch=B * T, policy_carry=count_carry,
                          store_carry=True)
    with pytest.raises(ValueError, match="resume"):
        fresh.collect(restored)
    resumed = fresh.resume(restored)
    new, b = fresh.collect(resumed)
    b = jax.tree.map(np.asarray, b)
    assert int(new.frames) == int(state.frames) + B * T
    np.testing.assert_array_equal(b["collector"]["traj_ids"][:, 0], int(state.next_traj_id) + np.arange(B))
    np.testing.assert_array_equal(b["collector"]["carry"]["count"], b["step_count"])
    CHECKS.generic(CHECKS.rows([b], 2), int(state.next_traj_id))


class DictObs(gym.ObservationWrapper):
    """The counting observation as a nested dict: ``{"state": [4], "extra": {"step": []}}``."""

    def __init__(self, env):
        super().__init__(env)
        box = env.observation_space
        self.observation_space = gym.spaces.Dict(
            {"state": box, "extra": gym.spaces.Dict({"step": gym.spaces.Box(0, 100, (), np.int64)})})

    def observation(self, obs):
        return {"state": obs, "extra": {"step": np.int64(obs[STEP])}}


@pytest.mark.parametrize("autoreset", ["NextStep", "SameStep"])
def test_dict_observations_stay_nested(autoreset):
    fns = [lambda i=i: DictObs(gym.wrappers.TimeLimit(CountingEnv(i), LIMIT)) for i in range(B)]
    vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode(autoreset))
    hc = HostCollector(vec, lambda p, o, k: (o["state"][:, STEP] % 3).astype(jnp.int32), frames_per_batch=B * T)
    _, batches = run(hc, 3)
    b = batches[0]
    assert set(b["observation"]) == {"state", "extra"} and b["observation"]["extra"]["step"].shape == (B, T)
    assert b["observation"]["extra"]["step"].dtype == np.int32  # int64 stored as JAX's int32
    r = CHECKS.rows(batches, 2)
    obs, nobs = r["observation"], r["next"]["observation"]
    check_host({**r, "observation": obs["state"], "next": {**r["next"], "observation": nobs["state"]}})
    np.testing.assert_array_equal(nobs["extra"]["step"], nobs["state"][..., STEP])


@pytest.mark.parametrize("key_fn", [jax.random.key, jax.random.PRNGKey])
def test_policy_keys_typed_and_raw(key_fn):
    """Each policy call gets its own key, of the kind the collector was started with (typed or
    raw ``uint32``); the key stream continues across batches."""
    kinds = []

    def keyed(params, obs, key):
        kinds.append(jnp.issubdtype(key.dtype, jax.dtypes.prng_key))
        return jax.random.randint(key, (obs.shape[0],), 0, 3), {"u": jax.random.uniform(key, (obs.shape[0],))}

    hc = HostCollector(make_vec(), keyed, frames_per_batch=B * T)
    state = hc.init(key_fn(0))
    state, b1 = hc.collect(state)
    state, b2 = hc.collect(state)
    assert set(kinds) == {key_fn is jax.random.key}
    u = np.concatenate([np.asarray(b1["u"]), np.asarray(b2["u"])], axis=1)  # [B, 2T]
    assert len(np.unique(u)) == u.size  # a fresh key for every call, also in the second batch
    check_host(CHECKS.rows([jax.tree.map(np.asarray, b) for b in (b1, b2)], 2))


def test_random_frames_store_the_policys_action_dtype():
    """Random actions (init_random_frames) are stored with the policy's action dtype, so random
    and policy batches go into one buffer."""
    hc = HostCollector(make_vec(), lambda p, o, k: (o[:, STEP] % 3).astype(jnp.uint8), frames_per_batch=B * T,
                       init_random_frames=B * T)
    _, batches = run(hc, 2)
    assert [b["action"].dtype for b in batches] == [np.uint8, np.uint8]
    rb = ReplayBuffer(storage=LazyTensorStorage(B * T * 2, ndim=2),
                      sampler=SliceSampler(num_slices=2, traj_key=("collector", "traj_ids")), batch_size=4)
    state = rb.init(batches[0])
    for b in batches:
        state = rb.add(state, b)
    assert len(state) == 2 * B * T


# ---------------------------------------------------------------------------- issue 26: nothing silent


class FailingEnv(CountingEnv):
    """A CountingEnv whose ``step`` raises once, at its ``fail_at``-th call."""

    def __init__(self, env_id=0, fail_at=3):
        super().__init__(env_id)
        self.calls, self.fail_at = 0, fail_at

    def step(self, action):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("env exploded")
        return super().step(action)


def failing_vec(mode):
    fns = [lambda i=i: gym.wrappers.TimeLimit(FailingEnv(i, 3 if i == 1 else -1), LIMIT) for i in range(B)]
    cls = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
    return cls(fns)


def check_transitions(b):
    """Each stored (observation, next observation) pair is one step of one episode."""
    obs, nobs = np.asarray(b["observation"]), np.asarray(b["next"]["observation"])
    np.testing.assert_array_equal(nobs[..., [ENV_ID, EPISODE]], obs[..., [ENV_ID, EPISODE]])
    np.testing.assert_array_equal(nobs[..., STEP], obs[..., STEP] + 1)
    np.testing.assert_array_equal(b["step_count"], obs[..., STEP])


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium logs the worker's error as warnings
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_after_an_env_raised_is_refused_until_init(mode):
    hc = HostCollector(failing_vec(mode), policy, frames_per_batch=B * T)
    state = hc.init(jax.random.key(0))
    with pytest.raises(RuntimeError, match="env exploded"):
        hc.collect(state, 0)
    for _ in range(2):  # never an AttributeError from a dead async worker, never wrong data
        with pytest.raises(RuntimeError, match=r"call init\(key\) \(or resume\(state\)\) again"):
            hc.collect(state, 0)
    if mode == "async":  # its failed worker is gone: init says to build a new env
        with pytest.raises(RuntimeError, match="build a new vector env"):
            hc.init(jax.random.key(1))
        hc.close()
        return
    state = hc.init(jax.random.key(1))
    for _ in range(2):
        state, b = hc.collect(state, 0)
        check_transitions(b)
    assert np.asarray(b["collector"]["traj_ids"]).min() >= 0


def test_action_the_env_would_cast_is_refused_before_any_step():
    hc = HostCollector(make_vec(), lambda p, o, k: jnp.full(o.shape[0], 1.7, jnp.float32), frames_per_batch=B * T)
    state = hc.init(jax.random.key(0))
    with pytest.raises(TypeError, match=r"dtype float32 for the action space Discrete\(3\)"):
        hc.collect(state, 0)
    # refused before the envs stepped: the state is still good (and integer actions are exact)
    hc.policy, hc._policy_step = None, None
    _, b = hc.collect(state, 0)
    check_transitions(b)


def test_single_env_is_refused_with_how_to_vectorize():
    for env in (gym.make("CartPole-v1"), lambda: gym.make("CartPole-v1")):
        with pytest.raises(TypeError, match=r"needs a vector env.*make_vec\('CartPole-v1'.*SyncVectorEnv"):
            HostCollector(env, policy, frames_per_batch=8)


def test_three_tuple_policy_without_policy_carry_says_so():
    def rec(p, o, k):
        return jnp.zeros(o.shape[0], jnp.int32), {}, jnp.zeros(o.shape[0])

    hc = HostCollector(make_vec(), rec, frames_per_batch=B * T)
    with pytest.raises(TypeError, match="3-tuple .*no policy_carry: pass policy_carry="):
        hc.collect(hc.init(jax.random.key(0)), 0)


def test_resume_wraps_trajectory_ids_like_the_device_path():
    hc = HostCollector(make_vec(), policy, frames_per_batch=B * T, reset_at_each_iter=True)
    state = hc.init(jax.random.key(0))
    state = dataclasses.replace(state, next_traj_id=np.asarray(2**31 - 2, np.int32))
    state = hc.resume(state)
    # the device counter's int32 arithmetic
    want = np.asarray(jnp.int32(2**31 - 2) + jnp.arange(B, dtype=jnp.int32))
    np.testing.assert_array_equal(state.traj_ids, want)
    assert state.traj_ids.dtype == np.int32 and int(state.next_traj_id) == -(2**31) + 2
    # a Python int (or int64) counter is the same int32 counter
    again = hc.resume(dataclasses.replace(state, next_traj_id=2**31 - 2))
    np.testing.assert_array_equal(again.traj_ids, want)
    assert again.traj_ids.dtype == np.int32 and int(again.next_traj_id) == -(2**31) + 2
    state = again  # (the envs were reset for this one)
    state, b = hc.collect(state, 0)
    np.testing.assert_array_equal(np.asarray(b["collector"]["traj_ids"])[:, 0], want)
    nxt = int(state.next_traj_id)
    state, b = hc.collect(state, 0)  # reset_at_each_iter: resume inside collect, past the wrap
    np.testing.assert_array_equal(np.asarray(b["collector"]["traj_ids"])[:, 0], nxt + np.arange(B))
