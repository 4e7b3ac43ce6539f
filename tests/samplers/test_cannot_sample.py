"""One rule for every sampler: when ``can_sample`` is False (empty buffer, or ``drop_last=True``
with fewer items / trajectories than one batch) ``sample`` returns all padding (zeros,
``info["mask"]`` False) and consumes no epoch; once enough data is stored it samples normally.
(TorchRL raises instead; rlbuf keeps static shapes under jit.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

CAP = 64


def data(n, traj_len=4):
    """``n`` steps of trajectories of ``traj_len`` steps (ids and done flags), values > 0."""
    t = np.arange(n)
    return {"obs": jnp.asarray(t + 1.0, jnp.float32),
            "traj": jnp.asarray(t // traj_len, jnp.int32),
            "next": {"done": jnp.asarray(t % traj_len == traj_len - 1),
                     "truncated": jnp.zeros(n, bool)}}


# name -> (sampler, batch_size, steps that are too few, steps that are enough)
CASES = {
    "random": (RandomSampler(), 16, 0, 1),
    "without_replacement": (SamplerWithoutReplacement(), 16, 0, 1),
    # issue 19: 10 stored items, batch 16
    "without_replacement_drop_last": (SamplerWithoutReplacement(drop_last=True), 16, 10, 16),
    "prioritized": (PrioritizedSampler(CAP, 0.7, 0.5), 16, 0, 1),
    "slice": (SliceSampler(num_slices=4, traj_key="traj"), 8, 0, 4),
    "slice_without_replacement": (SliceSamplerWithoutReplacement(num_slices=4, traj_key="traj"), 8, 0, 4),
    # issue 19: 3 trajectories, 4 slices
    "slice_without_replacement_drop_last": (
        SliceSamplerWithoutReplacement(num_slices=4, traj_key="traj", drop_last=True), 8, 12, 16),
    "prioritized_slice": (PrioritizedSliceSampler(CAP, 0.7, 0.5, num_slices=4, traj_key="traj"), 8, 0, 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_padding_and_no_epoch_when_cannot_sample(name):
    sampler, bs, few, enough = CASES[name]
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), sampler=sampler, batch_size=bs)
    add, sample, can = jax.jit(rb.add), jax.jit(rb.sample), jax.jit(rb.can_sample)
    state = rb.init(data(1))
    if few:
        state = add(state, data(few))
    assert not bool(can(state))
    before = state.sampler
    for i in range(3):  # repeated calls: still padding, still no epoch
        state, batch, info = sample(state, jax.random.key(i))
        assert not np.asarray(info["mask"]).any(), name
        assert all(not np.asarray(x).any() for x in jax.tree_util.tree_leaves(batch)), name
    if hasattr(before, "epoch"):
        assert int(state.sampler.epoch) == int(before.epoch), f"{name}: an epoch was consumed"
    state = add(state, data(enough - few) if enough > few else data(1))
    assert bool(can(state))
    state, batch, info = sample(state, jax.random.key(9))
    assert np.asarray(info["mask"]).any()
    if hasattr(state.sampler, "epoch"):
        assert int(state.sampler.epoch) == 1
