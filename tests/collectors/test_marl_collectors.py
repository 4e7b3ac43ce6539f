"""Multi-agent batches through every jitted collector (multi-sync, async, sharded) and through the
replay buffer's storage, samplers and transforms, unchanged: slices never cross an episode,
``compact_next`` and ``FrameStack`` work on grouped keys, per-transition priorities from the
agents' errors, ``split_trajectories``."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import rlbuf
from rlbuf.envs import GroundTruthMARLEnv, JaxMARLEnv

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "envs"))
from marl_checks import EP, STEP, check_marl, gt_policy  # noqa: E402

B, T = 2, 6
OBS = ("agents", "observation")


@pytest.fixture(scope="module")
def gt():
    return GroundTruthMARLEnv(min_length=2, max_length=4, max_steps=4, early_agent="agent_0", early_step=1)


@pytest.fixture(scope="module")
def env(gt):
    return JaxMARLEnv(gt)


@pytest.fixture(scope="module")
def policy(env):
    return gt_policy(env.action_space().spaces)


@pytest.fixture(scope="module")
def batches(env, policy):
    """Four consecutive [B, T] batches of a jitted Collector (compiled once)."""
    c = rlbuf.Collector(env, policy, frames_per_batch=B * T, num_envs=B)
    fn = jax.jit(c.collect)
    s = c.init(jax.random.key(0))
    out = []
    for _ in range(4):
        s, b = fn(s)
        out.append(b)
    assert fn._cache_size() == 1
    return out


def _rows(bs, ndim):
    def cat(*xs):
        x = np.concatenate([np.asarray(v) for v in xs], axis=ndim - 1)
        return x.reshape((-1,) + x.shape[ndim - 1:])

    return jax.tree.map(cat, *bs)


def test_multi_sync_stack(gt, env, policy):
    W = 2
    m = rlbuf.MultiSyncCollector([env] * W, policy, frames_per_batch=W * B * T, num_envs=B)
    fn = jax.jit(m.collect)
    s = m.init(jax.random.key(1))
    out = []
    for _ in range(2):
        s, b = fn(s)
        out.append(jax.tree.map(np.asarray, b))
    assert fn._cache_size() == 1
    assert out[0][OBS[0]][OBS[1]].shape == (W, B, T, 3, 4)
    assert out[0]["next"]["agents"]["done"].shape == (W, B, T, 3)
    check_marl(_rows(out, 3), gt, env.groups, env.action_space().spaces)


def test_async_and_sharded(gt, env, policy):
    W = 2
    col = rlbuf.MultiAsyncCollector([env] * W, policy, frames_per_batch=B * T, num_envs=B)
    seen = 0
    with col.iterate(jax.random.key(2), None, total_frames=3 * B * T) as it:
        for w, b in it:
            assert b["agents"]["action"].shape == (B, T, 3)
            seen += 1
    assert seen == 3
    plain = rlbuf.Collector(env, policy, frames_per_batch=B * T, num_envs=B)
    sharded = rlbuf.shard_collector(plain, Mesh(np.array(jax.devices()[:1]), ("data",)))
    fn = jax.jit(sharded.collect)
    s = sharded.init(jax.random.key(3))
    out = []
    for _ in range(2):
        s, b = fn(s, None)
        out.append(jax.tree.map(np.asarray, b))
    check_marl(_rows(out, 2), gt, env.groups, env.action_space().spaces)


def _buffer(sampler, example, *, size=64, batch_size=8, **kw):
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(size, ndim=2, **kw), sampler=sampler,
                            batch_size=batch_size)
    state = rb.init(example)
    return rb, state


def test_slices_never_cross_an_episode(batches):
    sampler = rlbuf.SliceSampler(slice_len=3, traj_key=("collector", "traj_ids"))
    rb, state = _buffer(sampler, batches[0], batch_size=12)
    add, sample = jax.jit(rb.add), jax.jit(rb.sample)
    for b in batches:
        state = add(state, b)
    for i in range(5):
        state, s, info = sample(state, jax.random.key(i))
        o = np.asarray(s["agents"]["observation"])  # [4, 3, A, 4]
        assert o.shape == (4, 3, 3, 4)
        assert (o[:, :, :, EP] == o[:, :1, :1, EP]).all()  # one episode per slice
        np.testing.assert_array_equal(np.diff(o[:, :, 0, STEP], axis=1), 1)
        assert np.asarray(s["next"]["truncated"])[:, -1].all()


def test_compact_next_and_frame_stack_on_grouped_keys(batches):
    sampler = rlbuf.RandomSampler()
    rb_full, full = _buffer(sampler, batches[0])
    rb_c, comp = _buffer(sampler, batches[0], compact_next=True)
    add_full, add_c, sample_c = jax.jit(rb_full.add), jax.jit(rb_c.add), jax.jit(rb_c.sample)
    for b in batches:
        full, comp = add_full(full, b), add_c(comp, b)
    for i in range(3):  # each compact sample equals the uncompressed storage at its index
        _, y, iy = sample_c(comp, jax.random.key(i))
        x = jax.tree.map(lambda v: v[iy["index"]], full.storage)
        jax.tree.map(np.testing.assert_array_equal, x, y)
        assert y["next"]["agents"]["observation"].shape == (8, 3, 4)
    fs = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(64, ndim=2), sampler=sampler, batch_size=8,
                            frame_stack=rlbuf.FrameStack(2, keys=(OBS,), axis=-1))
    st, add = fs.init(batches[0]), jax.jit(fs.add)
    for b in batches:
        st = add(st, b)
    _, s, _ = jax.jit(fs.sample)(st, jax.random.key(0))
    o = np.asarray(s["agents"]["observation"])  # [8, A, 4, 2]: previous frame then current
    assert o.shape == (8, 3, 4, 2)
    prev, cur = o[..., 0], o[..., 1]
    np.testing.assert_array_equal(prev[..., EP], cur[..., EP])
    np.testing.assert_array_equal(prev[..., STEP], np.maximum(cur[..., STEP] - 1, 0))
    no = np.asarray(s["next"]["agents"]["observation"])
    np.testing.assert_array_equal(no[..., 0], cur)


def test_per_transition_priority_from_agent_errors(batches):
    """A transition's priority is a function of its agents' errors (the largest |error| over
    the agents): one priority per [B, T] item, as for any batch."""
    sampler = rlbuf.PrioritizedSampler(max_capacity=64, alpha=1.0, beta=1.0)
    rb, state = _buffer(sampler, batches[0], batch_size=256)
    add, sample = jax.jit(rb.add), jax.jit(rb.sample)
    for b in batches:
        state = add(state, b)
    state, s, info = sample(state, jax.random.key(0))
    # [N, A] stand-in for per-agent TD errors (agent 0's reward; the others' are masked out)
    err = s["next"]["agents"]["reward"] * jnp.array([1.0, 0.0, 0.0])
    prio = jnp.max(jnp.abs(err), axis=-1)  # [N]
    state = rb.update_priority(state, info["index"], prio)
    updated = set(zip(*(np.asarray(i).tolist() for i in info["index"])))
    assert (np.asarray(prio) == 0).any()
    state, s, info2 = sample(state, jax.random.key(1))
    # items whose agents' errors were all 0 are never drawn again
    again = np.array([k in updated for k in zip(*(np.asarray(i).tolist() for i in info2["index"]))])
    assert again.any() and (np.asarray(s["next"]["agents"]["reward"])[:, 0][again] > 0).all()


def test_split_trajectories(batches):
    b = jax.tree.map(np.asarray, batches[0])
    out = rlbuf.split_trajectories(b)
    mask = np.asarray(out["collector"]["mask"])
    o = np.asarray(out["agents"]["observation"])
    assert o.shape[:2] == mask.shape and o.shape[2:] == (3, 4)
    for i in range(o.shape[0]):
        real = o[i][mask[i]]
        assert (real[:, :, EP] == real[0, 0, EP]).all()
        np.testing.assert_array_equal(np.diff(real[:, 0, STEP]), 1)
    assert mask.sum() == B * T
