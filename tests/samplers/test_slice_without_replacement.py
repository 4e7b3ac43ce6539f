"""``SliceSamplerWithoutReplacement``: an epoch yields one slice of every eligible stored
trajectory exactly once, batches hold distinct trajectories, and slices obey every
``SliceSampler`` property (checked with the ground truth of ``test_slice``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import NumpyRingBuffer
from test_slice import ADD_T, CAPS, KEYS, LANES, GroundTruth, N, check_batch, example, ref_runs

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.slice import SliceSamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

NUM_SLICES = 4
_FNS: dict = {}


def fns(ndim, mode, strict=True, drop_last=False, shuffle=True):
    key = (ndim, mode, strict, drop_last, shuffle)
    if key not in _FNS:
        sampler = SliceSamplerWithoutReplacement(
            num_slices=NUM_SLICES, strict_length=strict, drop_last=drop_last, shuffle=shuffle, **KEYS[mode]
        )
        rb = ReplayBuffer(
            storage=LazyTensorStorage(CAPS[ndim] * max(1, int(np.prod(LANES[ndim]))), ndim=ndim),
            sampler=sampler,
            batch_size=NUM_SLICES * N,
        )
        _FNS[key] = (rb, jax.jit(rb.add), jax.jit(lambda s, k: (rb.sample(s, k), rb.can_sample(s))))
    return _FNS[key]


def fill(ndim, mode, lengths, adds, **kw):
    rb, add, sample = fns(ndim, mode, **kw)
    gt = GroundTruth(LANES[ndim], lengths)
    ref = NumpyRingBuffer(CAPS[ndim], LANES[ndim])
    state = rb.init(example(ndim))
    for t_len in adds:
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
    return rb, add, sample, gt, ref, state


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([1, 2, 3]),
    mode=st.sampled_from(sorted(KEYS)),
    strict=st.booleans(),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    adds=st.lists(st.sampled_from(ADD_T), min_size=1, max_size=5),
)
def test_epoch_covers_each_trajectory_exactly_once(ndim, mode, strict, lengths, adds):
    _, _, sample, _, ref, state = fill(ndim, mode, lengths, adds, strict=strict)
    runs = ref_runs(ref)
    eligible = sorted(k for k, (_, ln) in runs.items() if ln >= (N if strict else 1))
    n_batches = -(-len(eligible) // NUM_SLICES)
    seen = []
    for i in range(n_batches):
        (state, batch, info), can = sample(state, jax.random.key(i))
        assert bool(can) == bool(eligible)
        out, _ = check_batch(ref, batch, info, N, strict, require_full=False)
        keys = [(lane, ep) for lane, ep, _, _ in out]
        assert len(set(keys)) == len(keys), "a batch repeats a trajectory"
        # Only the epoch's last batch may be partial.
        assert len(out) == (NUM_SLICES if i < n_batches - 1 else len(eligible) - NUM_SLICES * i)
        seen += keys
    assert sorted(seen) == eligible
    assert int(state.sampler.epoch) == (1 if eligible else 0)
    # The next sample starts a new epoch.
    (state, batch, info), _ = sample(state, jax.random.key(99))
    if eligible:
        assert int(state.sampler.epoch) == 2
        out, _ = check_batch(ref, batch, info, N, strict, require_full=False)
        assert len(out) == min(NUM_SLICES, len(eligible))
    else:
        assert not np.any(np.asarray(info["mask"]))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([1, 2]),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    adds=st.lists(st.sampled_from(ADD_T), min_size=1, max_size=4),
    more=st.lists(st.sampled_from(ADD_T), min_size=1, max_size=4),
)
def test_adds_mid_epoch_never_return_overwritten_data(ndim, lengths, adds, more):
    """Trajectories overwritten (or shrunk below slice_len) before their turn become padding;
    new ones wait for the next epoch; every slice still checks against the current ring."""
    _, add, sample, gt, ref, state = fill(ndim, "traj", lengths, adds)
    start_runs = ref_runs(ref)
    (state, batch, info), _ = sample(state, jax.random.key(0))
    check_batch(ref, batch, info, N, True, require_full=False)
    epoch = int(state.sampler.epoch)
    for i, t_len in enumerate(more):
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
        (state, batch, info), _ = sample(state, jax.random.key(i + 1))
        out, _ = check_batch(ref, batch, info, N, True, require_full=False)
        if int(state.sampler.epoch) == epoch:
            # Same epoch: only trajectories stored when it began.
            assert all((lane, ep) in start_runs for lane, ep, _, _ in out)
        else:
            epoch = int(state.sampler.epoch)
            start_runs = ref_runs(ref)


def test_drop_last_skips_the_partial_remainder_and_shuffle_false_is_storage_order():
    lengths = [3, 4, 5]
    _, _, sample, _, ref, state = fill(2, "traj", lengths, [7, 7], drop_last=True, shuffle=False)
    runs = ref_runs(ref)
    eligible = sorted(k for k, (_, ln) in runs.items() if ln >= N)
    assert len(eligible) % NUM_SLICES != 0  # so there is a partial remainder to drop
    full = len(eligible) // NUM_SLICES
    seen = []
    for i in range(full):
        (state, batch, info), can = sample(state, jax.random.key(i))
        out, _ = check_batch(ref, batch, info, N, True)
        assert len(out) == NUM_SLICES
        seen += [(lane, ep) for lane, ep, _, _ in out]
    # shuffle=False: lanes in order, trajectories in time order (ids increase along a lane).
    assert seen == sorted(seen) == eligible[: len(seen)]
    (state, batch, info), _ = sample(state, jax.random.key(7))
    assert int(state.sampler.epoch) == 2 and bool(np.all(np.asarray(info["mask"])))


@pytest.mark.parametrize("ndim", [1, 3])
def test_empty_buffer_gives_padding(ndim):
    rb, _, sample = fns(ndim, "end")
    (state, batch, info), can = sample(rb.init(example(ndim)), jax.random.key(0))
    assert not bool(can) and not np.any(np.asarray(info["mask"]))
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(batch))
