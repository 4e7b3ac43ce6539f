"""Priorities at the float32 limits (issue 12 #4): leaves, sums, default priorities and weights
stay finite and positive for both prioritized samplers (``SumTree.leaf_value`` /
``SumTree.weights``), and subnormal priorities with ``eps=0`` are still sampled."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.sumtree import SumTree
from rlbuf.storages import LazyTensorStorage

CAP = 16
F32 = np.finfo(np.float32)


@functools.lru_cache(maxsize=None)
def buffer(kind: str, alpha: float, beta: float = 1.0, eps: float = 1e-8):
    if kind == "flat":
        sampler = PrioritizedSampler(CAP, alpha, beta, eps)
        bs = 8
    else:
        sampler = PrioritizedSliceSampler(CAP, alpha, beta, eps, slice_len=2, end_key="done")
        bs = 8
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), sampler=sampler, batch_size=bs)
    return rb, jax.jit(rb.add), jax.jit(rb.sample), jax.jit(rb.update_priority)


def data(t, start=0):
    return {"obs": jnp.arange(start, start + t, dtype=jnp.float32), "done": jnp.zeros((t,), bool)}


def tree_of(state):
    return state.sampler.tree


def check_finite_tree(state):
    for level in tree_of(state).sums:
        assert np.isfinite(np.asarray(level)).all()
    root = float(tree_of(state).sums[0][0])
    assert np.isfinite(root) and root > 0


def check_weights(info):
    w = np.asarray(info["weight"])[np.asarray(info["mask"])]
    assert w.size and np.isfinite(w).all() and (w > 0).all() and (w <= 1).all(), w


@pytest.mark.parametrize("kind", ["flat", "slice"])
def test_alpha2_priority_1e30(kind):
    """alpha=2, one priority 1e30: (1e30)^2 overflows float32. Leaves are clamped, the root is
    finite, draws follow the big item, and new slots (default = max priority) stay finite with
    weights > 0 (before: root inf, every draw the last slot, later weights 0)."""
    rb, add, sample, update = buffer(kind, 2.0)
    state = add(rb.init(data(CAP)), data(CAP))
    state = update(state, jnp.array([3]), jnp.array([1e30], jnp.float32))
    check_finite_tree(state)
    state, batch, info = sample(state, jax.random.key(0))
    idx = np.asarray(info["index"])
    first = idx[:, 0] if idx.ndim == 2 else idx  # slices: their start
    assert (first == 3).all(), first  # 3 carries ~all the mass
    check_weights(info)
    state = add(state, data(4, 100))  # new slots get the (clamped) max priority
    check_finite_tree(state)
    # per-step priorities (the slice sampler's tree holds them only at valid slice starts)
    leaves = np.asarray(state.sampler.prio if kind == "slice" else tree_of(state).sums[-1])
    bound = rb.sampler._tree(state.layout).max_leaf
    assert np.isclose(leaves[:4], bound, rtol=1e-6).all(), leaves[:4]
    state, batch, info = sample(state, jax.random.key(1))
    check_weights(info)


@pytest.mark.parametrize("kind", ["flat", "slice"])
def test_alpha1_all_priorities_3e38(kind):
    """alpha=1, every priority 3e38 (near float32 max): the sum of 16 of them overflows;
    leaves are clamped, weights are 1 (not inf), new slots' priority finite."""
    rb, add, sample, update = buffer(kind, 1.0)
    state = add(rb.init(data(CAP)), data(CAP))
    state = update(state, jnp.arange(CAP), jnp.full((CAP,), 3e38, jnp.float32))
    check_finite_tree(state)
    state, batch, info = sample(state, jax.random.key(0))
    check_weights(info)
    np.testing.assert_allclose(np.asarray(info["weight"]), 1.0)
    state = add(state, data(3, 50))
    check_finite_tree(state)
    assert np.isfinite(np.asarray(tree_of(state).sums[-1])).all()
    state, batch, info = sample(state, jax.random.key(2))
    check_weights(info)


@pytest.mark.parametrize("kind", ["flat", "slice"])
def test_extreme_ratio_weights_stay_positive(kind):
    """A tiny and a huge priority in one buffer: (p / p_min) overflows float32, the weight of
    the huge item is a small positive number, not 0."""
    rb, add, sample, update = buffer(kind, 2.0)
    state = add(rb.init(data(CAP)), data(CAP))
    state = update(state, jnp.arange(CAP), jnp.full((CAP,), 1e-20, jnp.float32).at[5].set(1e30))
    check_finite_tree(state)
    state, batch, info = sample(state, jax.random.key(0))
    check_weights(info)


def test_eps0_subnormal_priorities_are_sampled():
    """eps=0, all priorities 0 but one subnormal (1e-40): XLA flushes subnormals to zero, the
    leaf is floored at the smallest normal float32 instead, so that item is sampled."""
    rb, add, sample, update = buffer("flat", 1.0, 0.5, 0.0)
    state = add(rb.init(data(CAP)), data(CAP))
    state = update(state, jnp.arange(CAP), jnp.zeros((CAP,), jnp.float32).at[7].set(1e-40))
    assert bool(rb.can_sample(state))
    state, batch, info = sample(state, jax.random.key(0))
    assert (np.asarray(info["index"]) == 7).all() and np.asarray(info["mask"]).all()
    check_weights(info)
    # a true zero stays never-sampled
    state = update(state, jnp.array([7]), jnp.zeros((1,), jnp.float32))
    assert not bool(rb.can_sample(state))


def test_leaf_value_range_and_order():
    tree = SumTree(1000)
    assert tree.max_leaf * tree.sizes[-1] * 2 <= float(F32.max) * (1 + 1e-6)
    raw = jnp.array([0.0, 1e-45, 1e-40, 1e-20, 1.0, 1e10, 1e30, 3e38], jnp.float32)
    v = np.asarray(tree.leaf_value(raw, 0.0, 2.0))
    assert v[0] == 0 and (v[1:] >= F32.tiny).all() and (v <= tree.max_leaf).all()
    assert (np.diff(v) >= 0).all()  # order kept (ties only at the bounds)
    np.testing.assert_allclose(v[4:6], [1.0, 1e20], rtol=1e-6)  # unchanged inside the range
    # root of n leaves all at the bound is finite
    full = tree.from_leaves(tree.init(), jnp.full((1000,), tree.max_leaf, jnp.float32))
    assert np.isfinite(float(tree.total(full)))
    # alpha=0 keeps 0 for a zero priority with eps=0, 1 otherwise
    np.testing.assert_array_equal(np.asarray(tree.leaf_value(jnp.array([0.0, 5.0]), 0.0, 0.0)), [0.0, 1.0])
