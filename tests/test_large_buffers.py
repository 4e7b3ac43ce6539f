"""A buffer of more than 2**31 items (2 lanes x 1.1e9 uint8 steps, 2.2 GB): the one test module
that allocates past the int32 range (slow, still run in CI; memory is freed at the end).

Filled by eleven large adds of constant per-lane values (the last wraps around), then sampled:
every sampled value must be the one written at its (lane, t), also where ``lane * capacity + t``
passes 2**31 (a flat int32 index read other data there), the draws must cover both lanes evenly
(they were all (0, 0) for a full buffer past 2**31), and ``num_stored`` must not wrap.
"""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.storages import LazyTensorStorage

pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized]  # 2.2 GB of writes and reads: run time

LANES, CAP, CHUNK = 2, 1_100_000_000, 110_000_000  # 2.2e9 items; 10 adds fill it, the 11th wraps
BATCH = 16_384


def expected(lane, t):
    """Value written at (lane, t): chunk k (steps [k * CHUNK, (k + 1) * CHUNK)) holds 2k + 1 + lane;
    chunk 0 was overwritten by the 11th add (k = 10)."""
    k = t // CHUNK
    k = np.where(k == 0, 10, k)
    return (2 * k + 1 + lane).astype(np.uint8)


def test_buffer_past_2_31_items_reads_what_was_written():
    rb = ReplayBuffer(storage=LazyTensorStorage(LANES * CAP, ndim=2), sampler=RandomSampler(), batch_size=BATCH)
    state = rb.init({"x": jax.ShapeDtypeStruct((LANES, CHUNK), jnp.uint8)})
    assert state.layout.capacity == CAP
    # The batch is built inside the jitted add (a broadcast XLA fuses into the write), in place.
    add = jax.jit(lambda s, v: rb.add(s, {"x": jnp.broadcast_to(v[:, None], (LANES, CHUNK))}), donate_argnums=0)
    try:
        for k in range(11):
            state = add(state, jnp.asarray([2 * k + 1, 2 * k + 2], jnp.uint8))
        assert int(state.count) == CAP and int(state.cursor) == CHUNK
        assert len(state) == LANES * CAP
        n = jax.jit(rb.num_stored)(state)
        assert float(n) == np.float32(LANES * CAP) and float(n) > 0  # was -2,094,967,296

        state, batch, info = jax.jit(rb.sample, donate_argnums=0)(state, jax.random.key(0))  # no storage copy
        lane, t = (np.asarray(i, np.int64) for i in info["index"])
        x = np.asarray(batch["x"])
        np.testing.assert_array_equal(x, expected(lane, t))
        past = lane * CAP + t >= 2**31
        assert past.sum() > 200  # ~4.8% of lane 1's draws: read through (lane, t), not a flat int32
        assert stats.binomtest(int(lane.sum()), BATCH).pvalue > 1e-4  # 50/50 between lanes
        assert stats.chisquare(np.bincount(t * 4 // CAP, minlength=4)).pvalue > 1e-4
    finally:
        for leaf in jax.tree_util.tree_leaves(state):
            leaf.delete()
        del state
        gc.collect()
