"""Slice samplers' ``span`` (TorchRL's): slices may start before a trajectory's first step or
run past its last, the missing steps being padding (``info["mask"]`` False, after the real
steps). The distribution is TorchRL's documented one (chi-square): a trajectory uniformly,
then a start uniformly over the allowed offsets; ``PrioritizedSliceSampler`` spans right only
(as TorchRL), each allowed start drawn by its priority."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

LENGTHS = (3, 4, 6, 2)  # with slice_len 3 and strict_length, the length-2 trajectory is never used
N, S, CALLS = 3, 256, 8


def data():
    ep = np.concatenate([np.full(n, i + 1) for i, n in enumerate(LENGTHS)]).astype(np.int32)
    step = np.concatenate([np.arange(n) for n in LENGTHS]).astype(np.int32)
    return {"ep": jnp.asarray(ep), "step": jnp.asarray(step)}


def offsets(span, length):
    left, right = (span, span) if not isinstance(span, tuple) else span
    lo = -(N - 1 if left is True else int(left))
    hi = length - 1 if right is True else length - N + int(right)
    return range(lo, hi + 1)


@pytest.mark.parametrize("span", [True, (True, False), (False, True), (1, 2)])
def test_distribution_and_padding(span):
    rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=S * N,
                      sampler=SliceSampler(slice_len=N, traj_key="ep", span=span))
    d = data()

    @jax.jit
    def run(key):
        state = rb.add(rb.init(d), d)

        def body(state, k):
            state, batch, info = rb.sample(state, k)
            return state, (batch["ep"], batch["step"], info["mask"])

        return jax.lax.scan(body, state, jax.random.split(key, CALLS))[1]

    ep, step, mask = (np.asarray(x).reshape(-1, N) for x in run(jax.random.key(0)))
    real = mask.sum(1)
    assert (real >= 1).all()
    assert (mask == (np.arange(N)[None, :] < real[:, None])).all()  # real steps first
    assert ((ep == 0) == ~mask).all()  # padding is zeroed, real steps are one trajectory's
    counts = collections.Counter()
    for e, st, r in zip(ep[:, 0], step[:, 0], real):
        # a slice of fewer than N steps starting at step 0 started before the trajectory
        off = st if st > 0 or r == N or r == LENGTHS[e - 1] else r - N
        counts[(int(e), int(off))] += 1
    eligible = [i + 1 for i, n in enumerate(LENGTHS) if n >= N]
    cells = [(e, o) for e in eligible for o in offsets(span, LENGTHS[e - 1])]
    assert set(counts) <= set(cells)
    expected = np.array([1 / len(eligible) / len(offsets(span, LENGTHS[e - 1])) for e, _ in cells]) * len(ep)
    observed = np.array([counts[c] for c in cells])
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_without_replacement_and_errors():
    rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=3 * N,
                      sampler=SliceSamplerWithoutReplacement(slice_len=N, traj_key="ep", span=True))
    d = data()
    state = jax.jit(rb.add)(rb.init(d), d)
    state, batch, info = jax.jit(rb.sample)(state, jax.random.key(1))
    assert sorted(np.asarray(batch["ep"])[:, 0].tolist()) == [1, 2, 3]  # one slice of each eligible trajectory
    assert (np.asarray(info["mask"]).sum(1) >= 1).all()
    with pytest.raises(ValueError, match="span right=3 must be smaller than slice_len=3"):
        ReplayBuffer(storage=LazyTensorStorage(32), batch_size=3 * N,
                     sampler=SliceSampler(slice_len=N, traj_key="ep", span=(0, 3))).init(d)
    with pytest.raises(ValueError, match="span must be a bool"):
        SliceSampler(slice_len=N, traj_key="ep", span=-1)
    for span in (True, (1, False), (True, 2)):
        with pytest.raises(ValueError, match="spans left, which is not supported"):
            PrioritizedSliceSampler(32, 0.6, 0.4, slice_len=N, traj_key="ep", span=span)


@pytest.mark.parametrize("span", [(False, True), (0, 1), (False, 2), False])
def test_prioritized_right_span(span):
    """``PrioritizedSliceSampler(span=(False, right))``: the valid starts are ``SliceSampler``'s
    right-span offsets, each drawn in proportion to its step's priority (chi-square against the
    enumerated starts); the slice holds the steps to the trajectory's end, padding after them."""
    rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=S * N,
                      sampler=PrioritizedSliceSampler(32, 1.0, 0.5, eps=1e-8, slice_len=N, traj_key="ep", span=span))
    d = data()
    prio = np.random.default_rng(3).uniform(0.2, 3.0, size=sum(LENGTHS)).astype(np.float32)

    @jax.jit
    def run(key):
        state = rb.add(rb.init(d), d)
        state = rb.update_priority(state, jnp.arange(sum(LENGTHS)), jnp.asarray(prio))

        def body(state, k):
            state, batch, info = rb.sample(state, k)
            return state, (batch["ep"], batch["step"], info["mask"], info["weight"])

        return jax.lax.scan(body, state, jax.random.split(key, CALLS))[1]

    ep, step, mask, weight = (np.asarray(x).reshape(-1, N) for x in run(jax.random.key(1)))
    real = mask.sum(1)
    start = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    assert ((ep == 0) == ~mask).all() and (mask == (np.arange(N)[None, :] < real[:, None])).all()
    np.testing.assert_array_equal(real, np.minimum(N, np.asarray(LENGTHS)[ep[:, 0] - 1] - step[:, 0]))
    assert ((weight > 0) == mask).all()
    cells = [(e, o) for e, n in enumerate(LENGTHS, 1) for o in offsets(span, n) if o >= 0]
    p = np.array([prio[start[e - 1] + o] for e, o in cells], np.float64)
    counts = collections.Counter(zip(ep[:, 0].tolist(), step[:, 0].tolist()))
    assert set(counts) <= set(cells), sorted(set(counts) - set(cells))
    observed = np.array([counts[c] for c in cells])
    assert stats.chisquare(observed, p / p.sum() * len(ep)).pvalue > 1e-3
