"""Issue 12 items 1-2: the collectors' counters never wrap into wrong results.

Counters are started just below their limits (int32 without x64; int64 with it, where the
same tests run at the int64 limit): ``frames`` saturates, trajectory ids run on through the
wrap and stay distinct, ``step_count`` saturates. The id arithmetic is also checked against a
numpy reference with Hypothesis, and through a SliceSampler reading the ids.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf import LazyTensorStorage, ReplayBuffer, SliceSampler
from rlbuf.collectors import Collector, MultiSyncCollector
from rlbuf.collectors._counters import global_traj_ids, id_dtype, saturating_add, step_counts, traj_ids
from rlbuf.envs.ground_truth import OBS_ENV_ID, OBS_EPISODE_ID

TRAJ = ("collector", "traj_ids")


def _max(dtype) -> int:
    return int(np.iinfo(dtype).max)


def _wrap(x: np.ndarray, dtype) -> np.ndarray:
    """Two's-complement wrap of exact integers into ``dtype`` (what the device arithmetic does)."""
    bits = np.iinfo(dtype).bits
    x = np.asarray(x, object) % (1 << bits)
    return np.array([v - (1 << bits) if v >= 1 << (bits - 1) else v for v in x.ravel()], np.int64).reshape(x.shape)


def reference_ids(done: np.ndarray, ids0: np.ndarray, counter: int):
    """TorchRL's rule with exact (unbounded) integers: ``done`` ``[T, N]`` time-major."""
    ids, out = [int(i) for i in ids0], []
    for t in range(done.shape[0]):
        out.append(list(ids))
        for i in range(done.shape[1]):
            if done[t, i]:
                ids[i], counter = counter, counter + 1
    return np.array(out, object), np.array(ids, object), counter


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 6), n=st.integers(1, 4), below=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_traj_ids_match_reference_across_the_wrap(t, n, below, seed):
    dt = id_dtype()
    rng = np.random.default_rng(seed)
    done = rng.random((t, n)) < 0.5
    counter = _max(dt) - below  # the counter passes the dtype's maximum inside the rollout
    ids0 = counter - 1 - np.arange(n)[::-1]
    ids, last, nxt = traj_ids(jnp.asarray(done), jnp.asarray(ids0, dt), jnp.asarray(counter, dt))
    want, want_last, want_next = reference_ids(done, ids0, counter)
    assert ids.dtype == last.dtype == nxt.dtype == dt
    np.testing.assert_array_equal(np.asarray(ids), _wrap(want, dt))
    np.testing.assert_array_equal(np.asarray(last), _wrap(want_last, dt))
    assert int(nxt) == _wrap(np.array([want_next]), dt)[0]
    # consecutive steps of an env share an id exactly when no done step separates them
    same = np.asarray(ids)[1:] == np.asarray(ids)[:-1]
    np.testing.assert_array_equal(same, ~done[:-1])


def test_global_traj_ids_across_the_wrap():
    dt = id_dtype()
    n, G = 3, 4
    # a shard's local counter running through its wrap: initial ids 0..n-1, then resets
    local = _wrap(np.arange(_max(dt) - 5, _max(dt) + 6, dtype=object), dt)
    for g in range(G):
        got = np.asarray(global_traj_ids(jnp.asarray(local, dt), g, n, G)).astype(np.int64)
        want = _wrap(n * G + (np.array(local, object) % (1 << np.iinfo(dt).bits) - n) * G + g, dt)
        np.testing.assert_array_equal(got, want)
        assert len(set(got.tolist())) == len(got)  # consecutive local ids stay distinct
    first = np.asarray(global_traj_ids(jnp.arange(n, dtype=dt), 2, n, G))
    np.testing.assert_array_equal(first, 2 * n + np.arange(n))


def test_saturating_counters():
    x = jnp.asarray([0, 5, 2**31 - 10, 2**31 - 1], jnp.int32)
    np.testing.assert_array_equal(saturating_add(x, 9), [9, 14, 2**31 - 1, 2**31 - 1])
    done = jnp.asarray([[False, True], [False, False], [False, False]])
    counts, last = step_counts(done, jnp.asarray([2**31 - 2, 7], jnp.int32))
    np.testing.assert_array_equal(counts, [[2**31 - 2, 7], [2**31 - 1, 0], [2**31 - 1, 1]])
    np.testing.assert_array_equal(last, [2**31 - 1, 2])


def _constant(params, obs, key):
    return jnp.full(obs.shape[:-1], 2, jnp.int32)


def test_frames_counter_does_not_wrap(gt_env):
    """Issue 12 repro 1: ``frames`` just below its limit, ``init_random_frames=100``: every batch
    keeps the policy's actions, and ``reset_at_each_iter`` keeps resetting."""
    params = gt_env.make_params(2, min_length=50, max_length=50)
    c = Collector(gt_env, _constant, frames_per_batch=8, num_envs=2, env_params=params, init_random_frames=100,
                  reset_at_each_iter=True)
    collect = jax.jit(c.collect)
    state = c.init(jax.random.key(0))
    assert state.frames.dtype == id_dtype()
    state = dataclasses.replace(state, frames=jnp.asarray(_max(state.frames.dtype) - 16, state.frames.dtype))
    for i in range(4):
        state, b = collect(state)
        assert (np.asarray(b["action"]) == 2).all(), f"batch {i}: random actions came back"
        assert (np.asarray(b["step_count"])[:, 0] == 0).all(), f"batch {i}: reset_at_each_iter stopped"
        assert int(state.frames) > 0
    assert int(state.frames) == _max(state.frames.dtype)  # saturated, not wrapped


def test_traj_id_counter_wraps_safely(gt_env):
    """Issue 12 repro 2: the id counter 6 below its limit, 3-step episodes: ids of consecutive
    episodes differ after the wrap, and slices sampled by trajectory id never cross episodes."""
    B, T = 2, 6
    params = gt_env.make_params(B, min_length=3, max_length=3)
    c = MultiSyncCollector([gt_env] * B, _constant, frames_per_batch=B * T, env_params=params)
    collect = jax.jit(c.collect)
    state = c.init(jax.random.key(1))
    dt = state.next_traj_id.dtype
    state = dataclasses.replace(state, next_traj_id=jnp.asarray(_max(dt) - 6, dt))
    rb = ReplayBuffer(storage=LazyTensorStorage(B * 64, ndim=2), sampler=SliceSampler(slice_len=3, traj_key=TRAJ),
                      batch_size=48)
    batches = []
    for _ in range(4):
        state, b = collect(state)
        batches.append(jax.tree.map(np.asarray, b))
    bstate = rb.init(batches[0])
    for b in batches:
        bstate = rb.add(bstate, b)
    ids = np.concatenate([b["collector"]["traj_ids"] for b in batches], axis=1)
    obs = np.concatenate([b["observation"] for b in batches], axis=1)
    assert ids.min() < 0 < ids.max()  # the counter did wrap
    episode = obs[..., OBS_ENV_ID].astype(np.int64) * 2**32 + obs[..., OBS_EPISODE_ID]
    pairs = set(zip(ids.ravel().tolist(), episode.ravel().tolist()))
    assert len(pairs) == len(np.unique(ids)) == len(np.unique(episode))  # one id per episode
    _, sample, _ = jax.jit(rb.sample)(bstate, jax.random.key(2))
    so = np.asarray(sample["observation"])
    assert (so[:, :, OBS_EPISODE_ID] == so[:, :1, OBS_EPISODE_ID]).all(), "a slice crosses episodes"
    assert (np.diff(so[:, :, 2], axis=1) == 1).all()
