"""PrioritizedSampler against a plain-numpy model of its priorities: chi-square of the
sampling frequencies, exact weights, max priority for new items, duplicates (last wins),
invalid priorities, ndim 1 and 2, errors, compile once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.storages import LazyTensorStorage

ALPHA, BETA, EPS = 0.7, 0.6, 1e-3
BATCH = 16


class NumpyPER:
    """Reference: raw priorities per flat slot ``lane * capacity + t``; probability
    ``(p + eps)^alpha / sum``; weight ``(p_i / p_min)^-beta``."""

    def __init__(self, lanes, capacity, alpha=ALPHA, beta=BETA, eps=EPS):
        self.lanes, self.capacity = lanes, capacity
        self.n = int(np.prod(lanes, dtype=int)) * capacity
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.leaf = np.zeros(self.n)
        self.max_p = None
        self.cursor = self.count = 0

    def add(self, t):
        pos = [(self.cursor + i) % self.capacity for i in range(t)][-self.capacity:]
        d = 1.0 if self.max_p is None else self.max_p
        for lane in range(self.n // self.capacity):
            for p in pos:
                self.leaf[lane * self.capacity + p] = (d + self.eps) ** self.alpha
        self.cursor = (self.cursor + t) % self.capacity
        self.count = min(self.count + t, self.capacity)

    def update(self, flat, prio):
        for f, p in zip(flat, prio):
            if not (np.isfinite(p) and p >= 0):
                p = 0.0
            elif f % self.capacity < self.count:
                self.max_p = p if self.max_p is None else max(self.max_p, p)
            if f % self.capacity < self.count:
                x = p + self.eps
                self.leaf[f] = x ** self.alpha if x > 0 else 0.0

    def probs(self):
        return self.leaf / self.leaf.sum()

    def weight(self, flat):
        p_min = self.leaf[self.leaf > 0].min()
        return (self.leaf[flat] / p_min) ** -self.beta


def flat_of(index, lanes, capacity):
    if not isinstance(index, tuple):
        return np.asarray(index)
    flat = np.asarray(index[-1])
    stride = capacity
    for i in range(len(lanes) - 1, -1, -1):
        flat = flat + np.asarray(index[i]) * stride
        stride *= lanes[i]
    return flat


@functools.lru_cache(maxsize=None)
def setup(ndim, eps=EPS):
    lanes = (3,) if ndim == 2 else ()
    cap = 8
    rb = ReplayBuffer(
        storage=LazyTensorStorage(cap * (3 if lanes else 1), ndim=ndim),
        sampler=PrioritizedSampler(64, ALPHA, BETA, eps=eps),
        batch_size=BATCH,
    )
    example = {"x": jnp.zeros((*lanes, 1, 2), jnp.float32)}
    fns = dict(
        add=jax.jit(rb.add),
        sample=jax.jit(rb.sample),
        update=jax.jit(rb.update_priority),
        many=jax.jit(lambda s, k: jax.vmap(lambda kk: rb.sample(s, kk)[2]["index"])(jax.random.split(k, 500))),
    )
    return rb, lanes, cap, example, fns


def data(lanes, t, start=0.0):
    return {"x": jnp.arange(start, start + np.prod(lanes, dtype=int) * t * 2, dtype=jnp.float32).reshape(*lanes, t, 2)}


@pytest.mark.parametrize("ndim", [1, 2])
def test_chi_square_and_weights(ndim):
    rb, lanes, cap, example, f = setup(ndim)
    ref = NumpyPER(lanes, cap)
    s = rb.init(example)
    s = f["add"](s, data(lanes, 6))
    ref.add(6)
    s = f["add"](s, data(lanes, 5))
    ref.add(5)
    rng = np.random.default_rng(0)
    s, _, info = f["sample"](s, jax.random.key(0))
    prio = rng.uniform(0, 3, BATCH).astype(np.float32)
    s = f["update"](s, info["index"], jnp.asarray(prio))
    ref.update(flat_of(info["index"], lanes, cap), prio)
    np.testing.assert_allclose(np.asarray(s.sampler.tree.sums[-1][: ref.n]), ref.leaf, rtol=1e-5)
    # Frequencies over 500 x 16 draws match p^alpha / sum.
    idx = f["many"](s, jax.random.key(1))
    counts = np.bincount(flat_of(idx, lanes, cap).ravel(), minlength=ref.n)
    probs = ref.probs()
    assert counts[probs == 0].sum() == 0
    nz = probs > 0
    assert stats.chisquare(counts[nz], probs[nz] / probs[nz].sum() * counts.sum()).pvalue > 1e-3
    # Weights: (N P(i))^-beta / max_j (N P(j))^-beta, exactly.
    s, batch, info = f["sample"](s, jax.random.key(2))
    flat = flat_of(info["index"], lanes, cap)
    np.testing.assert_allclose(np.asarray(info["weight"]), ref.weight(flat), rtol=1e-5)
    n_items = (probs > 0).sum()
    w_def = (n_items * probs[flat]) ** -BETA / ((n_items * probs[probs > 0]) ** -BETA).max()
    np.testing.assert_allclose(np.asarray(info["weight"]), w_def, rtol=1e-4)
    assert np.asarray(info["mask"]).all()
    # The batch is the stored data at the index.
    x = np.asarray(s.storage["x"]).reshape(-1, 2)
    np.testing.assert_array_equal(np.asarray(batch["x"]), x[flat])
    assert f["sample"]._cache_size() == 1 and f["update"]._cache_size() == 1


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.sampled_from([1, 3, 10])),
            st.tuples(st.just("update"), st.lists(st.sampled_from([0.0, 0.5, 2.0, 7.0, -1.0, np.nan]),
                                                  min_size=BATCH, max_size=BATCH)),
        ),
        min_size=1,
        max_size=6,
    ),
    ndim=st.sampled_from([1, 2]),
)
def test_against_reference(ops, ndim):
    """Random adds (any length, wrapping) and updates (duplicates, NaN, negatives) vs numpy."""
    rb, lanes, cap, example, f = setup(ndim)
    ref = NumpyPER(lanes, cap)
    s = rb.init(example)
    key = jax.random.key(0)
    for op, arg in ops:
        if op == "add":
            s = f["add"](s, data(lanes, arg))
            ref.add(arg)
        else:
            key, k = jax.random.split(key)
            s, _, info = f["sample"](s, k)
            idx = info["index"]
            # Force duplicates, last wins: write every priority at the sampled items, then the
            # same items again reversed.
            idx = jax.tree_util.tree_map(lambda i: jnp.concatenate([i[:8], i[:8][::-1]]), idx)
            s = f["update"](s, idx, jnp.asarray(arg, jnp.float32))
            ref.update(flat_of(idx, lanes, cap), np.asarray(arg, np.float32))
        np.testing.assert_allclose(np.asarray(s.sampler.tree.sums[-1][: ref.n]), ref.leaf, rtol=1e-5)
        assert bool(rb.can_sample(s)) == (ref.leaf.sum() > 0)


def test_new_items_get_max_priority_and_unwritten_updates_are_ignored():
    rb, lanes, cap, example, f = setup(2)
    s = f["add"](rb.init(example), data(lanes, 2))
    leaves = np.asarray(s.sampler.tree.sums[-1])
    assert np.allclose(leaves.reshape(3, cap)[:, :2], (1 + EPS) ** ALPHA)
    # Slot t=5 holds no data: ignored, and it does not count towards the max priority.
    s = f["update"](s, (jnp.array([0, 1, 2]), jnp.array([0, 1, 5])), jnp.array([4.0, 2.0, 100.0]))
    assert float(s.sampler.max_priority) == 4.0
    s = f["add"](s, data(lanes, 1))
    leaves = np.asarray(s.sampler.tree.sums[-1]).reshape(3, cap)
    np.testing.assert_allclose(leaves[:, 2], (4 + EPS) ** ALPHA, rtol=1e-6)
    assert leaves[2, 5] == 0 and leaves[:, 3:].sum() == 0


def test_zero_and_invalid_priorities_never_sampled():
    rb, lanes, cap, example, f = setup(1, eps=0.0)
    s = f["add"](rb.init(example), data(lanes, cap))
    prio = jnp.array([0.0, 1.0, np.nan, -3.0, np.inf, 2.0, 0.0, 1.0])
    s = f["update"](s, (jnp.arange(cap),), prio)
    idx = np.asarray(f["many"](s, jax.random.key(3)))
    assert set(np.unique(idx)) == {1, 5, 7}
    s = f["update"](s, (jnp.arange(cap),), jnp.zeros(cap))
    assert not bool(rb.can_sample(s))
    s, batch, info = f["sample"](s, jax.random.key(0))
    assert not np.asarray(info["mask"]).any() and not np.asarray(batch["x"]).any()


def test_empty_buffer():
    rb, lanes, cap, example, f = setup(1)
    s = rb.init(example)
    assert not bool(rb.can_sample(s))
    s, batch, info = f["sample"](s, jax.random.key(0))
    assert not np.asarray(info["mask"]).any() and not np.asarray(info["weight"]).any()


def test_update_in_a_scan_compiles_once():
    rb, lanes, cap, example, f = setup(1)
    s = f["add"](rb.init(example), data(lanes, cap))

    def body(s, k):
        s, _, info = rb.sample(s, k)
        return rb.update_priority(s, info["index"], info["weight"] * 2.0), None

    run = jax.jit(lambda s, k: jax.lax.scan(body, s, jax.random.split(k, 20))[0])
    s = run(s, jax.random.key(0))
    s = run(s, jax.random.key(1))
    assert run._cache_size() == 1
    leaves = np.asarray(s.sampler.tree.sums[-1][:cap], np.float64)
    np.testing.assert_allclose(float(s.sampler.tree.sums[0][0]), leaves.sum(), rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        PrioritizedSampler(10, -0.1, 0.5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        PrioritizedSampler(10, 0.5, 1.5)
    with pytest.raises(ValueError, match="finite"):
        PrioritizedSampler(10, float("nan"), 0.5)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        PrioritizedSampler(10, 0.5, 0.5, eps=-1.0)
    with pytest.raises(ValueError, match="max_capacity must be a positive int"):
        PrioritizedSampler(0, 0.5, 0.5)
    with pytest.raises(TypeError, match="float dtype"):
        PrioritizedSampler(10, 0.5, 0.5, dtype=jnp.int32)
    rb = ReplayBuffer(storage=LazyTensorStorage(24, ndim=2), sampler=PrioritizedSampler(20, 0.5, 0.5), batch_size=4)
    with pytest.raises(ValueError, match=r"max_capacity=20 is smaller than the storage \(24 transitions = 3 lanes"):
        rb.init({"x": jnp.zeros((3, 1))})
    rb, lanes, cap, example, f = setup(2)
    s = rb.init(example)
    with pytest.raises(ValueError, match=r"priority has shape \(3,\), expected \(4,\)"):
        rb.update_priority(s, (jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32)), jnp.ones(3))
    with pytest.raises(ValueError, match="index has 1 arrays, expected 2"):
        rb.update_priority(s, jnp.zeros(4, jnp.int32), jnp.ones(4))
    with pytest.raises(TypeError, match="index must be integer"):
        rb.update_priority(s, (jnp.zeros(4), jnp.zeros(4)), jnp.ones(4))


def test_ndim3_indices_and_chi_square():
    """[W, B, T] storage: leaves are flat slots (w * B + b) * capacity + t."""
    rb = ReplayBuffer(storage=LazyTensorStorage(2 * 2 * 4, ndim=3), sampler=PrioritizedSampler(16, 1.0, 1.0, eps=0.0),
                      batch_size=8)
    x = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3)
    s = jax.jit(rb.add)(rb.init({"x": x}), {"x": x})
    idx = (jnp.array([0, 1, 1]), jnp.array([1, 0, 1]), jnp.array([2, 0, 1]))
    s = jax.jit(rb.update_priority)(s, idx, jnp.array([5.0, 2.0, 3.0]))
    leaves = np.asarray(s.sampler.tree.sums[-1][:16]).reshape(2, 2, 4)
    assert leaves[0, 1, 2] == 5.0 and leaves[1, 0, 0] == 2.0 and leaves[1, 1, 1] == 3.0 and leaves[:, :, 3].sum() == 0
    draws = jax.jit(jax.vmap(lambda k: rb.sample(s, k)[1]["x"]))(jax.random.split(jax.random.key(0), 300))
    vals, counts = np.unique(np.asarray(draws), return_counts=True)
    p = leaves[:, :, :3].reshape(-1) / leaves.sum()
    expected = p[vals.astype(int)] * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
