"""Slice samplers' ``span`` (TorchRL's): slices may start before a trajectory's first step or
run past its last, the missing steps being padding (``info["mask"]`` False, after the real
steps). The distribution is TorchRL's documented one (chi-square): a trajectory uniformly,
then a start uniformly over the allowed offsets."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlbuf.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.storage import LazyTensorStorage

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
    with pytest.raises(ValueError, match="span=.* is not supported"):
        PrioritizedSliceSampler(32, 0.6, 0.4, slice_len=N, traj_key="ep", span=True)
