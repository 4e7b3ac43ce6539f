"""``PerWorkerReplayBuffer(..., proportional=True)``: with unevenly fed workers each item comes
from a worker in proportion to what it holds, so uniform sampling stays uniform over all
stored items (chi-square); ``info["worker_fill"]``; priorities routed back; refused with
samplers that draw without replacement."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.scaling.per_worker import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

W, LANES, CAP, B = 3, 2, 8, 12


def make(sampler=None, proportional=True, batch_size=B):
    rb = ReplayBuffer(storage=LazyTensorStorage(W * LANES * CAP, ndim=2), batch_size=batch_size,
                      sampler=sampler or RandomSampler())
    return PerWorkerReplayBuffer(rb, W, proportional=proportional)


def ids(t, start, w):
    x = 1000 * w + start + np.arange(LANES * t, dtype=np.int32).reshape(LANES, t)
    return {"id": jnp.asarray(x), "ep": jnp.asarray(np.zeros_like(x))}


def uneven(pw):
    """Worker 0: 8 steps per lane (full), worker 1: 2, worker 2: nothing."""
    state = pw.init(ids(1, 0, 0))
    state = pw.add_worker(state, 0, ids(5, 0, 0))
    state = pw.add_worker(state, 0, ids(3, 100, 0))
    return pw.add_worker(state, 1, ids(2, 0, 1))


def test_uniform_over_all_items_with_uneven_fills():
    pw = make()
    state = uneven(pw)
    draw = jax.jit(jax.vmap(lambda k: pw.sample(state, k)[1:], in_axes=(0,)))
    batch, info = draw(jax.random.split(jax.random.key(0), 400))
    np.testing.assert_array_equal(np.asarray(info["worker_fill"])[0], [16, 4, 0])
    got = np.asarray(batch["id"]).reshape(-1)
    assert np.all(np.asarray(info["mask"]))
    stored = np.concatenate([np.asarray(state.storage["id"][0]).reshape(-1),
                             np.asarray(state.storage["id"][1, :, :2]).reshape(-1)])
    assert set(got.tolist()) <= set(stored.tolist())
    c = np.array([np.sum(got == i) for i in stored])
    assert c.sum() == got.size and stats.chisquare(c).pvalue > 1e-4
    # the index locates each item, worker first
    w, lane, t = (np.asarray(i)[0] for i in info["index"])
    np.testing.assert_array_equal(np.asarray(state.storage["id"])[w, lane, t], np.asarray(batch["id"])[0])
    # the equal-share mode over-samples worker 1 (a third of every batch from 4 of 20 items)
    pw_eq = make(proportional=False)
    b_eq, i_eq = pw_eq.sample(state, jax.random.key(1))[1:]
    np.testing.assert_array_equal(np.asarray(i_eq["worker_fill"]), [16, 4, 0])
    assert not pw_eq.can_sample(state) and pw.can_sample(state)


def test_slices_and_priorities_per_worker():
    pw = make(SliceSampler(slice_len=2, traj_key="ep"))
    state = uneven(pw)
    _, batch, info = jax.jit(pw.sample)(state, jax.random.key(0))
    assert batch["id"].shape == (B // 2, 2)
    assert np.all(np.asarray(info["index"][0]) < 2)  # never the empty worker
    ppw = make(PrioritizedSampler(W * LANES * CAP, 1.0, 1.0))
    state = uneven(ppw)
    _, _, info = ppw.sample(state, jax.random.key(0))
    state = ppw.update_priority(state, info["index"], jnp.full((B,), 5.0))
    w, lane, t = (np.asarray(i) for i in info["index"])
    tree = state.sampler.tree.sums[-1]
    for wi, li, ti in zip(w, lane, t):
        assert float(tree[wi, li * CAP + ti]) == pytest.approx(5.0)


def test_refuses_samplers_without_replacement():
    with pytest.raises(ValueError, match="independent draws"):
        make(SamplerWithoutReplacement())
