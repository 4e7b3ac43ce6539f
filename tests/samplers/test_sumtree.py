"""Sum/min tree: numpy reference for updates (duplicates: last wins), exact prefix search,
no drift after 10^6 float32 updates, chi-square of sampling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rlbuf.samplers.sumtree import SumTree

N = 37
K = 12


def ref_update(leaves, idx, values):
    """Plain loop: later entries overwrite earlier ones; out-of-range ignored."""
    leaves = leaves.copy()
    for i, v in zip(idx, values):
        if 0 <= i < len(leaves):
            leaves[i] = v
    return leaves


# (branching, dense_levels): dense_levels=0 exercises the gather/scatter path on every level,
# the default recomputes the small levels whole.
CONFIGS = [(2, 0), (8, 0), (8, 512)]


@functools.lru_cache(maxsize=None)
def jitted(config):
    branching, dense = config if isinstance(config, tuple) else (config, 512)
    tree = SumTree(N, branching, dense_levels=dense)
    return tree, jax.jit(tree.update), jax.jit(tree.find)


def test_sizes_and_errors():
    assert SumTree(1, 8).sizes == (1, 8)
    assert SumTree(37, 2).sizes == (1, 2, 4, 6, 10, 20, 38)
    assert SumTree(1000, 8).sizes[-1] == 1000
    with pytest.raises(ValueError, match="n must be"):
        SumTree(0)
    with pytest.raises(ValueError, match="branching"):
        SumTree(10, 1)
    with pytest.raises(TypeError, match="float"):
        SumTree(10, 2, "int32")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    branching=st.sampled_from(CONFIGS),
    steps=st.lists(
        st.tuples(
            st.lists(st.integers(-2, N + 2), min_size=K, max_size=K),
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, 1e-3, 7.25]), min_size=K, max_size=K),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_update_matches_reference(branching, steps):
    tree, update, _ = jitted(branching)
    t = tree.init()
    ref = np.zeros(N)
    for idx, vals in steps:
        t = update(t, jnp.array(idx, jnp.int32), jnp.array(vals, jnp.float32))
        ref = ref_update(ref, idx, vals)
    leaves = np.asarray(tree.leaves(t))
    np.testing.assert_array_equal(leaves, ref.astype(np.float32))
    np.testing.assert_allclose(float(tree.total(t)), ref.sum(), rtol=1e-6)
    pos = ref[ref > 0]
    assert float(tree.min(t)) == (np.float32(pos.min()) if pos.size else np.inf)
    # Every internal node equals the reduction of its children.
    full = tree.rebuild(t)
    for a, b in zip(full.sums, t.sums):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    for a, b in zip(full.mins, t.mins):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jitted(branching)[1]._cache_size() == 1


def test_duplicates_last_wins():
    tree, update, _ = jitted((8, 0))
    t = update(tree.init(), jnp.array([5, 5, 7, 5, 7, 3, 3, 3, 3, 3, 3, 3]),
               jnp.array([1.0, 2.0, 9.0, 4.0, 0.0, 1, 2, 3, 4, 5, 6, 7.5]))
    leaves = np.asarray(tree.leaves(t))
    assert leaves[5] == 4.0 and leaves[7] == 0.0 and leaves[3] == 7.5
    assert float(tree.total(t)) == 11.5


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    branching=st.sampled_from(CONFIGS),
    vals=st.lists(st.sampled_from([0.0, 0.0, 1.0, 2.0, 0.25]), min_size=N, max_size=N),
    u=st.lists(st.floats(0, 1, exclude_max=True), min_size=K, max_size=K),
)
def test_find_is_prefix_search(branching, vals, u):
    tree, update, find = jitted(branching)
    vals = np.array(vals, np.float32)
    if vals.sum() == 0:
        vals[N // 2] = 1.0
    t = update(tree.init(), jnp.arange(N), jnp.asarray(vals))
    t = update(t, jnp.arange(K), jnp.asarray(vals[:K]))  # (no-op rewrite, exercises dedupe)
    mass = np.float32(u) * np.float32(vals.sum())
    got = np.asarray(find(t, jnp.asarray(mass)))
    cs = np.cumsum(vals.astype(np.float64))
    # (u rounded to 1.0 in float32 gives mass == total: the last positive leaf.)
    want = np.minimum(np.searchsorted(cs, mass.astype(np.float64), side="right"), np.flatnonzero(vals)[-1])
    assert (vals[got] > 0).all()
    # Exact dyadic values: float32 partial sums are exact, so the search is exact.
    np.testing.assert_array_equal(got, want)
    # Masses at or past the total still land on the last positive leaf.
    edge = np.asarray(find(t, jnp.asarray([vals.sum(), vals.sum() * 2], jnp.float32)))
    assert (edge == np.flatnonzero(vals)[-1]).all()


@pytest.mark.parametrize("stratified", [False, True])
def test_sampling_chi_square(stratified):
    tree, update, _ = jitted(8)
    rng = np.random.default_rng(0)
    vals = rng.uniform(0.1, 2, N).astype(np.float32)
    vals[[3, 11, 30]] = 0.0
    t = update(tree.init(), jnp.arange(N), jnp.asarray(vals))
    draws = jax.jit(jax.vmap(lambda k: tree.sample(t, k, 100, stratified)))(jax.random.split(jax.random.key(1), 400))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=N)
    assert counts[vals == 0].sum() == 0
    expected = vals.astype(np.float64) / vals.astype(np.float64).sum() * counts.sum()
    nz = vals > 0
    p = stats.chisquare(counts[nz], expected[nz]).pvalue
    assert p > 1e-3, p


def test_no_drift_after_a_million_float32_updates():
    """1000 jitted steps x 1000 random indices (duplicates included), 30% zeros: the root
    stays the sum of the leaves and zero leaves are never drawn (flashbax #52)."""
    n = 4096
    tree = SumTree(n, 8, "float32", dense_levels=64)  # gather/scatter on the levels of > 64 nodes

    def step(t, key):
        k1, k2, k3 = jax.random.split(key, 3)
        idx = jax.random.randint(k1, (1000,), 0, n)
        v = jax.random.uniform(k2, (1000,), minval=0.0, maxval=10.0) ** 3
        v = jnp.where(jax.random.uniform(k3, (1000,)) < 0.3, 0.0, v)
        return tree.update(t, idx, v), None

    run = jax.jit(lambda t, key: jax.lax.scan(step, t, jax.random.split(key, 1000))[0])
    t = run(tree.init(), jax.random.key(0))
    leaves = np.asarray(tree.leaves(t), np.float64)
    assert (leaves == 0).sum() > 0.2 * n
    np.testing.assert_allclose(float(tree.total(t)), leaves.sum(), rtol=1e-5)
    assert float(tree.min(t)) == np.float32(leaves[leaves > 0].min())
    draws = np.asarray(jax.jit(jax.vmap(lambda k: tree.sample(t, k, 1000)))(jax.random.split(jax.random.key(2), 200)))
    assert (leaves[draws.ravel()] > 0).all()
    # Internal nodes are still exactly recomputed from the leaves.
    full = tree.rebuild(t)
    for a, b in zip(full.sums, t.sums):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
