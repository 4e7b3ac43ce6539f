"""``is_init`` at slice starts (TorchRL's ``SliceSampler(init_key="is_init")``): every slice
sampler returns the stored ``is_init`` flag OR-ed with True at each slice's first step, so a
recurrent module restarts from the stored state there; ``init_key=None`` leaves the stored
flags untouched; buffers that do not store the key are unaffected."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_slice import GroundTruth

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

LANES, CAP, N, S = (3,), 16, 4, 6


def stored(lengths=(5, 7, 9), t_len=14):
    gt = GroundTruth(LANES, lengths)
    b = gt.batch(t_len)
    b["is_init"] = b["obs"][..., 1] == 0  # True at each episode's first step (what a collector stores)
    return b


SAMPLERS = {
    "slice": lambda **kw: SliceSampler(slice_len=N, traj_key="ep", **kw),
    "slice_short": lambda **kw: SliceSampler(slice_len=N, traj_key="ep", strict_length=False, **kw),
    "without_replacement": lambda **kw: SliceSamplerWithoutReplacement(slice_len=N, traj_key="ep", **kw),
    "prioritized": lambda **kw: PrioritizedSliceSampler(64, 0.7, 0.5, slice_len=N, traj_key="ep", **kw),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("init_key", ["is_init", None])
def test_is_init_at_each_slice_start(name, init_key):
    kw = {} if init_key == "is_init" else {"init_key": None}
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP * 3, ndim=2), sampler=SAMPLERS[name](**kw), batch_size=S * N)
    data = jax.tree_util.tree_map(jnp.asarray, stored((2, 5, 7) if name == "slice_short" else (5, 7, 9)))
    state = jax.jit(rb.add)(rb.init(data), data)
    sample = jax.jit(rb.sample)
    seen_mid = False
    for i in range(4):
        state, batch, info = sample(state, jax.random.key(i))
        mask = np.asarray(info["mask"])
        got = np.asarray(batch["is_init"])
        want = np.asarray(batch["obs"][..., 1] == 0) & mask  # the stored flag of each sampled step
        seen_mid |= bool((~want[:, 0] & mask[:, 0]).any())
        if init_key is not None:
            want[:, 0] |= mask[:, 0]  # every real slice starts with is_init True
        np.testing.assert_array_equal(got, want)
    assert seen_mid  # some slices did start mid-episode, where the stored flag is False


def test_buffers_without_the_key_are_unaffected():
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP * 3, ndim=2), sampler=SAMPLERS["slice"](), batch_size=S * N)
    data = stored()
    del data["is_init"]
    data = jax.tree_util.tree_map(jnp.asarray, data)
    state = rb.add(rb.init(data), data)
    _, batch, _ = rb.sample(state, jax.random.key(0))
    assert "is_init" not in batch
