"""Burn-in sequences (``burn_in=b``) of every slice sampler against the numpy reference.

A sequence is ``[b + slice_len]`` steps: the learning part is exactly what the sampler
returns with ``burn_in=0`` for the same state and key (so its distribution is unchanged), and
the ``b`` steps before it are the ones just before its first learning step in the same stored
trajectory, front-padded with zeros where the trajectory (or its stored part) starts later.
Data from ``test_slice.GroundTruth``: observations encode ``(episode id, step)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import NumpyRingBuffer
from scipy import stats
from test_slice import ADD_T, CAPS, KEYS, LANES, GroundTruth, N, check_batch, example, lane_of, n_lanes, ref_runs

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.scaling.sharding import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

B = 2  # burn-in steps
NUM_SLICES = 6
SAMPLERS = {
    "slice": lambda b, keys: SliceSampler(slice_len=N, burn_in=b, **keys),
    "loose": lambda b, keys: SliceSampler(slice_len=N, burn_in=b, strict_length=False, **keys),
    "without": lambda b, keys: SliceSamplerWithoutReplacement(slice_len=N, burn_in=b, **keys),
    "prioritized": lambda b, keys: PrioritizedSliceSampler(64, 0.7, 0.5, slice_len=N, burn_in=b, **keys),
}

_FNS: dict = {}


def fns(ndim, mode, kind):
    """``(rb_burn, add, sample_both)``: ``sample_both(state, key)`` samples the same sampler with
    ``burn_in=B`` and 0 (same state layout: ``burn_in`` changes ``sample`` only), one compile."""
    key = (ndim, mode, kind)
    if key not in _FNS:
        storage = LazyTensorStorage(CAPS[ndim] * n_lanes(LANES[ndim]), ndim=ndim)
        rbs = [ReplayBuffer(storage=storage, sampler=SAMPLERS[kind](b, KEYS[mode]), batch_size=N * NUM_SLICES)
               for b in (B, 0)]
        both = jax.jit(lambda s, k: (rbs[0].sample(s, k), rbs[1].sample(s, k)[1:]))
        _FNS[key] = (rbs[0], jax.jit(rbs[0].add), both)
    return _FNS[key]


def check_burn_in(ref, batch, info, strict):
    """The learning part passes every plain-slice check; the burn-in part is exact."""
    lanes = ref.lanes
    mask, learn = np.asarray(info["mask"]), np.asarray(info["learning_mask"])
    n_seq = mask.shape[0]
    assert mask.shape == learn.shape == (n_seq, B + N)
    assert not learn[:, :B].any()
    np.testing.assert_array_equal(learn[:, B:], mask[:, B:])
    index = info["index"] if lanes else (info["index"],)
    tail = {**info, "mask": mask[:, B:], "index": tuple(np.asarray(i)[:, B:] for i in index)}
    if not lanes:
        tail["index"] = tail["index"][0]
    cut = jax.tree_util.tree_map(lambda x: np.asarray(x)[:, B:], batch)
    out, _ = check_batch(ref, cut, tail, N, strict, require_full=False)
    runs = ref_runs(ref)
    obs = np.asarray(batch["obs"])
    ring_obs = ref.storage()["obs"].reshape(n_lanes(lanes), ref.capacity, 2) if ref.count else None
    t, lane = np.asarray(index[-1]), lane_of(index, lanes)
    real = [i for i in range(n_seq) if mask[i, B:].any()]
    assert len(real) == len(out)
    for i, (ln, ep, s0, _) in zip(real, out):
        first, _ = runs[(ln, ep)]
        r = min(B, s0 - first)  # real burn-in steps: the stored ones of the same trajectory
        np.testing.assert_array_equal(mask[i, :B], np.arange(B) >= B - r)
        want = np.zeros((B, 2), obs.dtype)
        want[B - r:] = np.array([(ep, s) for s in range(s0 - r, s0)], obs.dtype).reshape(r, 2)
        np.testing.assert_array_equal(obs[i, :B], want)
        # info["index"] locates the real burn-in steps too.
        np.testing.assert_array_equal(ring_obs[lane[i, B - r:B], t[i, B - r:B]], want[B - r:])
    for i in set(range(n_seq)) - set(real):
        assert not mask[i].any() and not obs[i].any()


@pytest.mark.slow  # ~2 min on 2 cores: 24 sampler configurations to compile
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([1, 2, 3]),
    mode=st.sampled_from(sorted(KEYS)),
    kind=st.sampled_from(sorted(SAMPLERS)),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    adds=st.lists(st.sampled_from(ADD_T), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_burn_in_sequences_exact(ndim, mode, kind, lengths, adds, seed):
    rb, add, sample_both = fns(ndim, mode, kind)
    gt = GroundTruth(LANES[ndim], lengths)
    ref = NumpyRingBuffer(CAPS[ndim], LANES[ndim])
    state = rb.init(example(ndim))
    key = jax.random.key(seed)
    for t_len in adds:
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
        key, k = jax.random.split(key)
        (s1, batch, info), (_, info0) = sample_both(state, k)
        # Same draw with and without burn-in: the learning steps are unchanged.
        for a, b in zip(jax.tree_util.tree_leaves(info["index"]), jax.tree_util.tree_leaves(info0["index"])):
            lm = np.asarray(info["learning_mask"])[:, B:]
            np.testing.assert_array_equal(np.where(lm, np.asarray(a)[:, B:], -1), np.where(lm, np.asarray(b), -1))
        np.testing.assert_array_equal(np.asarray(info["mask"])[:, B:], np.asarray(info0["mask"]))
        check_burn_in(ref, batch, info, kind != "loose")
        if kind == "prioritized":
            w = np.asarray(info["weight"])
            assert not w[:, :B].any()
            np.testing.assert_array_equal(w[:, B:], np.asarray(info0["weight"]))
        state = s1


def test_learning_starts_chi_square():
    """Learning starts with burn-in follow TorchRL's rule: a trajectory uniformly among the
    eligible ones, then a start uniformly in it (many trajectories start within ``B`` steps of
    the ring's oldest slot, so padding is frequent)."""
    rb, add, sample_both = fns(2, "traj", "slice")
    gt = GroundTruth(LANES[2], [3, 5, 4, 7])
    ref = NumpyRingBuffer(CAPS[2], LANES[2])
    data = gt.batch(13)
    ref.add(data)
    state = add(rb.init(example(2)), jax.tree_util.tree_map(jnp.asarray, data))
    draws = 400
    info = jax.jit(jax.vmap(lambda k: sample_both(state, k)[0][2]))(jax.random.split(jax.random.key(3), draws))
    runs = {k: v for k, v in ref_runs(ref).items() if v[1] >= N}
    lanes_t = np.asarray(info["index"][-1])[:, :, B].reshape(-1)
    lane = np.asarray(info["index"][0])[:, :, B].reshape(-1)
    rank = (lanes_t - ref.cursor) % ref.capacity if ref.added > ref.capacity else lanes_t
    counts: dict = {}
    for ln, r in zip(lane, rank):
        counts[(int(ln), int(r))] = counts.get((int(ln), int(r)), 0) + 1
    # Expected: each eligible run 1 / n_runs, its starts uniform.
    st_ = ref.stored()["ep"].reshape(3, ref.count)
    expected = {}
    for (ln, ep), (_, length) in runs.items():
        r0 = int(np.argmax(st_[ln] == ep))
        for o in range(length - N + 1):
            expected[(ln, r0 + o)] = 1 / len(runs) / (length - N + 1)
    assert set(counts) <= set(expected)
    cells = sorted(expected)
    obs = np.array([counts.get(c, 0) for c in cells])
    exp = np.array([expected[c] for c in cells]) * obs.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-3


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_burn_in_validated(bad):
    with pytest.raises(ValueError, match="burn_in"):
        SliceSampler(slice_len=3, traj_key="ep", burn_in=bad)


def test_burn_in_per_worker_and_split():
    """Per-worker buffers (through ``split``) keep the burn-in: ``[num_slices, B + N]`` with
    every worker's sequences exact."""
    rb = ReplayBuffer(storage=LazyTensorStorage(2 * 3 * CAPS[2], ndim=2),
                      sampler=SliceSampler(slice_len=N, burn_in=B, traj_key="ep"), batch_size=2 * N * 4)
    assert rb.split(2).sampler.burn_in == B
    pw = PerWorkerReplayBuffer(rb, num_workers=2)
    gts = [GroundTruth((3,), [4, 6]), GroundTruth((3,), [5])]
    refs = [NumpyRingBuffer(CAPS[2], (3,)) for _ in gts]
    data = [g.batch(12) for g in gts]
    for r, d in zip(refs, data):
        r.add(d)
    state = pw.add(pw.init(example(2)), jax.tree_util.tree_map(lambda *x: jnp.stack(x), *data))
    _, batch, info = jax.jit(pw.sample)(state, jax.random.key(0))
    assert batch["obs"].shape == (8, B + N, 2) and info["learning_mask"].shape == (8, B + N)
    w = np.asarray(info["index"][0])[:, 0]
    for g in range(2):
        rows = w == g
        assert rows.sum() == 4
        sub = jax.tree_util.tree_map(lambda x: np.asarray(x)[rows], batch)
        sinfo = {k: (tuple(np.asarray(i)[rows] for i in v[1:]) if k == "index" else np.asarray(v)[rows])
                 for k, v in info.items() if k != "worker_fill"}  # ([W]: per worker, not per item)
        check_burn_in(refs[g], sub, sinfo, True)


def test_is_init_at_first_burn_in_step():
    """TorchRL's init_key rule with burn-in: ``is_init`` True at each sequence's first real step
    (the first real burn-in step, or the learning start when all burn-in is padding), OR-ed with
    the stored flags; False on padding."""
    rb = ReplayBuffer(storage=LazyTensorStorage(16), sampler=SliceSampler(slice_len=2, burn_in=3, traj_key="ep"),
                      batch_size=2 * 8)
    ep = np.repeat(np.arange(1, 5), 4)
    data = {"ep": jnp.asarray(ep), "step": jnp.asarray(np.tile(np.arange(4), 4)),
            "is_init": jnp.asarray(np.tile(np.arange(4), 4) == 0)}
    state = rb.add(rb.init(data), data)
    _, batch, info = jax.jit(rb.sample)(state, jax.random.key(1))
    mask, init, step = (np.asarray(x) for x in (info["mask"], batch["is_init"], batch["step"]))
    for i in range(mask.shape[0]):
        first = int(np.argmax(mask[i]))
        want = np.zeros(5, bool)
        want[first] = True
        want |= mask[i] & (step[i] == 0)  # the stored flags
        np.testing.assert_array_equal(init[i], want)
        assert step[i, first] == max(step[i, 3] - 3, 0)  # burn-in reaches back to the episode start
