"""The seed's five collector + buffer configurations, end to end.

Each collects a few batches from the ground-truth env (observation ``[env_id, episode_id,
step, length]``), adds them to a buffer, samples, and checks the samples against a numpy
reference of what the ring holds: every sampled item is stored and located by
``info["index"]``; every slice is one trajectory (one ``("collector","traj_ids")`` value, one
episode, consecutive steps) of the stored data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import NumpyRingBuffer

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.collectors import Collector, MultiSyncCollector
from rlbuf.envs import GroundTruthEnv
from rlbuf.envs.ground_truth import OBS_EPISODE_ID, OBS_STEP
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

FRAMES = 32  # frames per collected batch
N = 64  # buffer size in transitions (wraps after two batches)
ITERS = 5
NUM_SLICES = 4
SLICE_LEN = 3
TRAJ = ("collector", "traj_ids")


def env():
    return GroundTruthEnv(num_actions=3)


def collect(collector, n=ITERS, reshape=None):
    fn = jax.jit(collector.collect)
    cstate = collector.init(jax.random.key(0))
    out = []
    for _ in range(n):
        cstate, batch = fn(cstate, None)
        out.append(batch if reshape is None else jax.tree_util.tree_map(reshape, batch))
    return out


def flat_lanes(x, ndim):
    """``[*lanes, T, ...]`` -> ``[L, T, ...]``."""
    lead = int(np.prod(x.shape[: ndim - 1], dtype=np.int64)) if ndim > 1 else 1
    return x.reshape((lead,) + x.shape[ndim - 1 :])


def check_slices(ref: NumpyRingBuffer, batch, info, ndim):
    """Every slice of a strict SliceSampler batch is ``SLICE_LEN`` consecutive stored steps of one
    trajectory, located by ``info["index"]``, with truncated/done set at its last step."""
    mask = np.asarray(info["mask"])
    assert mask.shape == (NUM_SLICES, SLICE_LEN) and mask.all()
    index = info["index"] if ndim > 1 else (info["index"],)
    lane = np.ravel_multi_index(tuple(np.asarray(i) for i in index[:-1]), ref.lanes) if ndim > 1 else 0
    t = np.asarray(index[-1])
    ring = jax.tree_util.tree_map(lambda x: flat_lanes(x, ndim), ref.storage())
    obs = np.asarray(batch["observation"])
    ids = np.asarray(batch["collector"]["traj_ids"])
    assert obs.shape[:2] == (NUM_SLICES, SLICE_LEN)
    np.testing.assert_array_equal(obs, ring["observation"][lane, t])
    np.testing.assert_array_equal(ids, ring["collector"]["traj_ids"][lane, t])
    assert np.all(ids == ids[:, :1]), ids
    assert np.all(obs[..., OBS_EPISODE_ID] == obs[:, :1, OBS_EPISODE_ID])
    assert np.all(np.diff(obs[..., OBS_STEP], axis=1) == 1), obs[..., OBS_STEP]
    # The slice is part of what the ring stores now, in this order (no stale or unwritten data).
    stored = jax.tree_util.tree_map(lambda x: flat_lanes(x, ndim), ref.stored())
    for i in range(NUM_SLICES):
        ln = int(np.ravel(lane)[i * SLICE_LEN]) if ndim > 1 else 0
        run = stored["collector"]["traj_ids"][ln] == ids[i, 0]
        steps = stored["observation"][ln][run][:, OBS_STEP]
        assert set(obs[i, :, OBS_STEP]) <= set(steps)
    last = np.zeros((NUM_SLICES, SLICE_LEN), bool)
    last[:, -1] = True
    np.testing.assert_array_equal(np.asarray(batch["next"]["truncated"]), last)
    assert np.all(np.asarray(batch["next"]["done"])[:, -1])


def run_buffer(rb, batches, ndim, lanes):
    ref = NumpyRingBuffer(N // max(int(np.prod(lanes, dtype=np.int64)), 1), lanes)
    add, sample = jax.jit(rb.add), jax.jit(rb.sample)
    state = rb.init(batches[0])
    for i, b in enumerate(batches):
        ref.add(jax.tree_util.tree_map(np.asarray, b))
        state = add(state, b)
        state, batch, info = sample(state, jax.random.key(i))
        yield ref, state, batch, info


def test_1_flattened_batch_into_flat_storage_with_random_sampler():
    """``[B, T]`` data flattened with ``reshape(-1)`` into ``LazyTensorStorage(N)`` + ``RandomSampler``."""
    batches = collect(Collector(env(), frames_per_batch=FRAMES, num_envs=4),
                      reshape=lambda x: x.reshape(-1, *x.shape[2:]))
    assert batches[0]["observation"].shape == (FRAMES, 4)
    rb = ReplayBuffer(storage=LazyTensorStorage(N), sampler=RandomSampler(), batch_size=16)
    for ref, state, batch, info in run_buffer(rb, batches, 1, ()):
        assert int(state.count) == ref.count
        assert np.asarray(info["mask"]).all()
        ring = ref.storage()
        np.testing.assert_array_equal(np.asarray(batch["observation"]), ring["observation"][np.asarray(info["index"])])
        stored = {tuple(r) for r in ref.stored()["observation"]}
        assert all(tuple(r) in stored for r in np.asarray(batch["observation"]))


def test_2_one_env_flat_storage_slice_sampler():
    batches = collect(Collector(env(), frames_per_batch=FRAMES))
    assert batches[0]["observation"].shape == (FRAMES, 4)
    rb = ReplayBuffer(storage=LazyTensorStorage(N), sampler=SliceSampler(num_slices=NUM_SLICES, trajectory_key=TRAJ),
                      batch_size=NUM_SLICES * SLICE_LEN)
    for ref, state, batch, info in run_buffer(rb, batches, 1, ()):
        assert batch["observation"].shape == (NUM_SLICES, SLICE_LEN, 4)
        check_slices(ref, batch, info, 1)


def test_3_vectorized_envs_ndim2_slice_sampler():
    batches = collect(Collector(env(), frames_per_batch=FRAMES, num_envs=4))
    assert batches[0]["observation"].shape == (4, FRAMES // 4, 4)
    rb = ReplayBuffer(storage=LazyTensorStorage(N, ndim=2),
                      sampler=SliceSampler(num_slices=NUM_SLICES, trajectory_key=TRAJ),
                      batch_size=NUM_SLICES * SLICE_LEN)
    for ref, state, batch, info in run_buffer(rb, batches, 2, (4,)):
        check_slices(ref, batch, info, 2)


def test_4_multisync_stacked_workers_ndim2():
    batches = collect(MultiSyncCollector([env()] * 4, frames_per_batch=FRAMES, cat_results="stack"))
    assert batches[0]["observation"].shape == (4, FRAMES // 4, 4)
    rb = ReplayBuffer(storage=LazyTensorStorage(N, ndim=2),
                      sampler=SliceSampler(num_slices=NUM_SLICES, end_key=("next", "done")),
                      batch_size=NUM_SLICES * SLICE_LEN)
    for ref, state, batch, info in run_buffer(rb, batches, 2, (4,)):
        check_slices(ref, batch, info, 2)


def test_5_multisync_workers_of_vectorized_envs_ndim3():
    batches = collect(MultiSyncCollector([env()] * 4, num_envs=2, frames_per_batch=FRAMES, cat_results="stack"))
    assert batches[0]["observation"].shape == (4, 2, FRAMES // 8, 4)
    rb = ReplayBuffer(storage=LazyTensorStorage(N, ndim=3),
                      sampler=SliceSampler(num_slices=NUM_SLICES, trajectory_key=TRAJ),
                      batch_size=NUM_SLICES * SLICE_LEN)
    for ref, state, batch, info in run_buffer(rb, batches, 3, (4, 2)):
        check_slices(ref, batch, info, 3)


@pytest.mark.parametrize("ndim", [2])
def test_slices_from_collector_data_are_strictly_increasing_in_step(ndim):
    """flashbax's property on real collector data: within a slice the env's step counter
    strictly increases (a slice never wraps to another episode or across the write head)."""
    batches = collect(Collector(env(), frames_per_batch=FRAMES, num_envs=4))
    rb = ReplayBuffer(storage=LazyTensorStorage(N, ndim=ndim),
                      sampler=SliceSampler(num_slices=NUM_SLICES, trajectory_key=TRAJ),
                      batch_size=NUM_SLICES * SLICE_LEN)
    for _, _, batch, _ in run_buffer(rb, batches, ndim, (4,)):
        sc = np.asarray(batch["step_count"])
        assert np.all(np.diff(sc, axis=1) > 0)
        assert jnp.all(batch["next"]["truncated"][:, -1])
