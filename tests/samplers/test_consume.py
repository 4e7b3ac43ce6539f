"""``consume_after_n_samples`` of ``RandomSampler`` and ``SamplerWithoutReplacement``: an item
returned ``n`` times is never returned again and leaves ``num_stored`` / ``len`` /
``can_sample``; a write to its slot brings a new item (count 0); ring order is kept. A numpy
reference model of the counts, a chi-square of the uniform subsets, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import rlbuf
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.scaling.per_worker import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

CAP, B = 6, 4  # time slots per lane, batch size
SAMPLERS = {"random": RandomSampler, "without_replacement": SamplerWithoutReplacement}
_FNS: dict = {}


def fns(kind, n, lanes):
    key = (kind, n, lanes)
    if key not in _FNS:
        size = CAP * (int(np.prod(lanes)) if lanes else 1)
        rb = ReplayBuffer(storage=LazyTensorStorage(size, ndim=len(lanes) + 1), batch_size=B,
                          sampler=SAMPLERS[kind](consume_after_n_samples=n))
        _FNS[key] = (rb, jax.jit(rb.add), jax.jit(rb.sample), jax.jit(rb.num_stored), jax.jit(rb.can_sample))
    return _FNS[key]


def ids(lanes, t, start):
    n = int(np.prod(lanes)) if lanes else 1
    return {"id": jnp.asarray(start + np.arange(n * t, dtype=np.int32).reshape(*lanes, t))}


class CountModel:
    """numpy reference: item id per slot, returns per slot, ring order."""

    def __init__(self, lanes, n):
        self.n_lanes, self.n = (int(np.prod(lanes)) if lanes else 1), n
        self.ids = np.full((self.n_lanes, CAP), -1)
        self.returns = np.zeros((self.n_lanes, CAP), int)
        self.added = 0

    def add(self, x):
        x = np.asarray(x).reshape(self.n_lanes, -1)
        for t in range(x.shape[1]):
            slot = (self.added + t) % CAP
            self.ids[:, slot], self.returns[:, slot] = x[:, t], 0
        self.added += x.shape[1]

    def live(self):
        return set(self.ids[(self.ids >= 0) & (self.returns < self.n)].tolist())

    def returned(self, got):
        for i in got:
            lane, slot = np.argwhere(self.ids == i)[0]
            self.returns[lane, slot] += 1


@pytest.mark.parametrize("lanes", [(), (2,)], ids=["ndim1", "ndim2"])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_consumed_items_never_returned_and_counts_match_reference(kind, n, lanes):
    rb, add, sample, num_stored, can_sample = fns(kind, n, lanes)
    model = CountModel(lanes, n)
    state = rb.init(ids(lanes, 1, 0))
    start, key = 0, 0
    for t, draws in ((4, 3), (3, 2), (5, 6), (2, 9)):  # adds wrap the ring over consumed and live slots
        b = ids(lanes, t, start)
        start += b["id"].size
        state = add(state, b)
        model.add(b["id"])
        for _ in range(draws):
            live = model.live()
            assert int(num_stored(state)) == len(live) == len(state)
            assert bool(can_sample(state)) == (len(live) > 0)
            state, out, info = sample(state, jax.random.key(key))
            key += 1
            mask = np.asarray(info["mask"])
            got = np.asarray(out["id"])[mask]
            assert len(set(got.tolist())) == len(got)  # distinct within a batch
            assert set(got.tolist()) <= live  # never a consumed (or overwritten) item
            if kind == "random":  # a uniform subset of the live items, as large as it can be
                assert len(got) == min(B, len(live))
            assert not np.any(np.asarray(out["id"])[~mask])  # padding zeroed
            model.returned(got)
    # drained: everything still stored was returned n times
    for _ in range(30):
        state, out, info = sample(state, jax.random.key(1000 + _))
        model.returned(np.asarray(out["id"])[np.asarray(info["mask"])])
    assert model.live() == set() and int(num_stored(state)) == 0 and not bool(can_sample(state))


def test_random_consume_draws_uniform_subsets():
    rb, add, sample, _, _ = fns("random", 1, ())
    state = add(rb.init(ids((), 1, 0)), ids((), CAP, 0))
    firsts = jax.vmap(lambda k: sample(state, k)[1]["id"])(jax.random.split(jax.random.key(0), 3000))
    c = np.bincount(np.asarray(firsts).reshape(-1), minlength=CAP)
    assert stats.chisquare(c).pvalue > 1e-4 and c.sum() == 3000 * B


def test_per_worker_consume_counts_every_worker():
    pw = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(2 * 2 * CAP, ndim=2), batch_size=2 * B,
                                            sampler=RandomSampler(consume_after_n_samples=1)), 2)
    state = pw.add(pw.init(ids((2,), 1, 0)), ids((2, 2), 3, 0))
    assert int(pw.num_stored(state)) == len(state) == 12
    state, _, info = jax.jit(pw.sample)(state, jax.random.key(0))
    assert int(pw.num_stored(state)) == len(state) == 12 - 2 * B


def test_bad_input_names_the_argument():
    for cls in (RandomSampler, SamplerWithoutReplacement):
        with pytest.raises(ValueError, match="consume_after_n_samples"):
            cls(consume_after_n_samples=0)
        with pytest.raises(TypeError, match="consume_after_n_samples"):
            cls(consume_after_n_samples=1.5)
    for cls in (rlbuf.SliceSampler, rlbuf.SliceSamplerWithoutReplacement):
        with pytest.raises(ValueError, match="not supported by slice samplers"):
            cls(slice_len=2, consume_after_n_samples=1)
    with pytest.raises(ValueError, match="not supported by slice samplers"):
        rlbuf.PrioritizedSliceSampler(8, 0.5, 0.5, slice_len=2, consume_after_n_samples=1)
