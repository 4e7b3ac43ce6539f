"""``ReplayBuffer`` end to end: ``info["index"]`` locates samples, donation updates in place,
no recompilation across iterations (eager loop and jitted ``lax.scan``), empty buffers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import NumpyRingBuffer

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

LANES = {1: (), 2: (3,), 3: (2, 2)}
CAP = 6  # time slots per lane
SAMPLERS = {"random": RandomSampler(), "without_replacement": SamplerWithoutReplacement()}


def batch(lanes, t, start):
    n = int(np.prod(lanes, dtype=np.int64)) if lanes else 1
    ids = jnp.asarray(start + np.arange(n * t).reshape(*lanes, t), jnp.int32)
    return {"obs": jnp.stack([ids, -ids], -1).astype(jnp.float32), "next": {"done": ids % 2 == 0}, "id": ids}


_FNS: dict = {}


def fns(ndim, sampler):
    """Module-level cache of (rb, jitted add, jitted sample) per config."""
    key = (ndim, sampler)
    if key not in _FNS:
        rb = ReplayBuffer(
            storage=LazyTensorStorage(CAP * max(1, int(np.prod(LANES[ndim]))), ndim=ndim),
            sampler=SAMPLERS[sampler],
            batch_size=8,
        )
        _FNS[key] = (rb, jax.jit(rb.add), jax.jit(rb.sample))
    return _FNS[key]


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_info_index_locates_samples(ndim, sampler):
    rb, add, sample = fns(ndim, sampler)
    lanes = LANES[ndim]
    state = rb.init(batch(lanes, 1, 0))
    ref = NumpyRingBuffer(CAP, lanes)
    start, key = 1, jax.random.key(0)
    for t in (5, 5, 5, 5):  # wraps the ring of 6 with the cursor at 5, 4, 3, 2
        b = batch(lanes, t, start)
        start += b["id"].size
        state, ref = add(state, b), (ref.add(jax.tree_util.tree_map(np.asarray, b)) or ref)
        for _ in range(3):
            key, sub = jax.random.split(key)
            state, out, info = sample(state, sub)
            idx = info["index"]
            if ndim == 1:
                assert isinstance(idx, jax.Array) and idx.shape == (8,)
            else:
                assert isinstance(idx, tuple) and len(idx) == ndim and all(i.shape == (8,) for i in idx)
            mask = np.asarray(info["mask"])
            if int(state.added) == 5:  # the documented expression itself, on device
                np.testing.assert_array_equal(np.asarray(state.storage["id"][idx])[mask], np.asarray(out["id"])[mask])
            for leaf, got in zip(jax.tree_util.tree_leaves(state.storage), jax.tree_util.tree_leaves(out)):
                # numpy indexing with the same index (the documented storage[k][info["index"]])
                np_idx = np.asarray(idx) if ndim == 1 else tuple(np.asarray(i) for i in idx)
                np.testing.assert_array_equal(np.asarray(leaf)[np_idx][mask], np.asarray(got)[mask])
            # Every real sample is a stored transition (ids of the reference's stored items).
            assert set(np.asarray(out["id"])[mask].tolist()) <= set(ref.items()["id"].tolist())
            assert mask.any()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("ndim", [1, 2])
def test_empty_buffer_cannot_sample_and_returns_zeros(ndim, sampler):
    rb, _, sample = fns(ndim, sampler)
    state = rb.init(batch(LANES[ndim], 1, 0))
    assert rb.can_sample(state).dtype == jnp.bool_ and not bool(rb.can_sample(state))
    state, out, info = sample(state, jax.random.key(1))
    assert not np.asarray(info["mask"]).any()
    for x in jax.tree_util.tree_leaves(out):
        assert x.shape[0] == 8 and not np.asarray(x).any()
    state = fns(ndim, sampler)[1](state, batch(LANES[ndim], 1, 1))
    assert bool(rb.can_sample(state))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_donated_add_is_in_place(ndim):
    rb, _, _ = fns(ndim, "random")
    add = jax.jit(rb.add, donate_argnums=0)
    lanes = LANES[ndim]
    state = rb.init(batch(lanes, 1, 0))
    for i in range(3):
        old = jax.tree_util.tree_leaves(state.storage)
        new = add(state, batch(lanes, 4, 100 * i + 1))
        assert all(leaf.is_deleted() for leaf in old)
        state = new
    assert int(state.count) == CAP and int(state.added) == 12


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_hundred_iterations_compile_once(sampler):
    rb = ReplayBuffer(storage=LazyTensorStorage(30, ndim=2), sampler=SAMPLERS[sampler], batch_size=8)
    add = jax.jit(rb.add, donate_argnums=0)
    sample = jax.jit(rb.sample)
    state = rb.init(batch((3,), 1, 0))
    key = jax.random.key(2)
    for i in range(100):
        state = add(state, batch((3,), 4, 12 * i + 1))
        key, sub = jax.random.split(key)
        state, out, info = sample(state, sub)
    jax.block_until_ready(out)
    assert add._cache_size() == 1
    assert sample._cache_size() == 1
    assert int(state.added) == 400 and int(state.count) == 10


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_scan_loop_compiles_once_and_matches_eager(sampler):
    rb = ReplayBuffer(storage=LazyTensorStorage(30, ndim=2), sampler=SAMPLERS[sampler], batch_size=8)

    def step(carry, xs):
        state, key = carry
        key, sub = jax.random.split(key)
        state = rb.add(state, xs)
        state, out, info = rb.sample(state, sub)
        return (state, key), (out["id"], info["mask"])

    @jax.jit
    def loop(state, key, data):
        return jax.lax.scan(step, (state, key), data)

    ids = jnp.arange(100 * 3 * 4, dtype=jnp.int32).reshape(100, 3, 4) + 1
    data = {"obs": jnp.stack([ids, -ids], -1).astype(jnp.float32), "next": {"done": ids % 2 == 0}, "id": ids}
    state0 = rb.init(batch((3,), 1, 0))
    (state, _), (got, mask) = loop(state0, jax.random.key(3), data)
    (state_b, _), _ = loop(state, jax.random.key(4), data)
    assert loop._cache_size() == 1
    assert int(state.added) == 400 and int(state_b.added) == 800
    # The first steps one jitted call at a time give the same samples as the scan.
    add, sample = jax.jit(rb.add), jax.jit(rb.sample)
    st, key = state0, jax.random.key(3)
    for i in range(6):
        key, sub = jax.random.split(key)
        st = add(st, jax.tree_util.tree_map(lambda x: x[i], data))
        st, out, info = sample(st, sub)
        np.testing.assert_array_equal(np.asarray(out["id"]), np.asarray(got[i]))
        np.testing.assert_array_equal(np.asarray(info["mask"]), np.asarray(mask[i]))


def test_varying_time_length_between_adds():
    rb, add, sample = fns(2, "random")
    state = rb.init(batch((3,), 1, 0))
    ref = NumpyRingBuffer(CAP, (3,))
    start = 1
    for t in (1, 4, 2, 9, 3, 6, 5):  # one executable per distinct T
        b = batch((3,), t, start)
        start += b["id"].size
        state = add(state, b)
        ref.add(jax.tree_util.tree_map(np.asarray, b))
        np.testing.assert_array_equal(np.asarray(state.storage["id"]), ref.storage()["id"])
        assert (int(state.cursor), int(state.count)) == (ref.cursor, ref.count)
        state, out, info = sample(state, jax.random.key(t))
        assert set(np.asarray(out["id"]).tolist()) <= set(ref.items()["id"].tolist())
    assert len(state) == 3 * CAP


def test_transform_applied_and_index_before_transform():
    rb = ReplayBuffer(storage=LazyTensorStorage(12, ndim=1), batch_size=5,
                      transform=lambda b: {**b, "obs": b["obs"] * 2})
    state = jax.jit(rb.add)(rb.init({"obs": jnp.zeros((1, 2))}), {"obs": jnp.arange(1.0, 21.0).reshape(10, 2)})
    state, out, info = jax.jit(rb.sample)(state, jax.random.key(0))
    stored = np.asarray(state.storage["obs"])
    np.testing.assert_array_equal(np.asarray(out["obs"]), 2 * stored[np.asarray(info["index"])])


def test_keys_stores_only_the_named_keys():
    """``keys=``: a subset of the add batch (nested keys as tuples, a key may name a subtree) is
    stored; ``init``'s example and ``add``'s batch may carry more; a missing key raises naming it."""
    rb = ReplayBuffer(storage=LazyTensorStorage(12, ndim=2), batch_size=4, keys=("obs", ("next", "done")))
    lanes = LANES[2]
    full = dict(batch(lanes, 2, 0), extra=jnp.zeros((3, 2, 5)))
    state = rb.init(full)
    assert sorted(state.layout.keys()) == [("next", "done"), ("obs",)]
    state = jax.jit(rb.add)(state, full)
    state, out, info = rb.sample(state, jax.random.key(0))
    assert sorted(out) == ["next", "obs"] and sorted(out["next"]) == ["done"]
    np.testing.assert_array_equal(out["obs"], np.asarray(full["obs"])[info["index"]])
    sub = ReplayBuffer(storage=LazyTensorStorage(12, ndim=2), batch_size=4, keys=["next"])
    assert sorted(sub.init(full).layout.keys()) == [("next", "done")]
    with pytest.raises(KeyError, match=r"key \('next', 'reward'\) of keys= is not in the batch"):
        ReplayBuffer(storage=LazyTensorStorage(12, ndim=2), batch_size=4, keys=(("next", "reward"),)).init(full)
    with pytest.raises(ValueError, match="keys must be a non-empty sequence"):
        ReplayBuffer(storage=LazyTensorStorage(12, ndim=2), batch_size=4, keys="obs")


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_num_stored_and_len_count_transitions_over_all_lanes(ndim):
    rb, add, _ = fns(ndim, "random")
    lanes = LANES[ndim]
    n = max(1, int(np.prod(lanes)))
    state = rb.init(batch(lanes, 1, 0))
    num_stored = jax.jit(rb.num_stored)
    assert int(num_stored(state)) == len(state) == 0
    for t, stored in ((4, 4), (4, CAP)):  # then the ring is full
        state = add(state, batch(lanes, t, 0))
        assert int(num_stored(state)) == len(state) == stored * n


def test_batch_size_is_keyword_only_and_required():
    with pytest.raises(TypeError):
        ReplayBuffer(storage=LazyTensorStorage(8))
    with pytest.raises(TypeError):
        ReplayBuffer(LazyTensorStorage(8), batch_size=2)


def test_warn_on_empty_warns_eagerly_only_when_it_cannot_sample():
    """Issue 26 (first hour): warn_on_empty=True makes an eager sample of a buffer that cannot
    sample warn (the batch is padding); never under jit, never once it can sample, never by
    default; the jitted functions are shared with the default buffer (no recompilation)."""
    import warnings

    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), batch_size=4, warn_on_empty=True)
    quiet = ReplayBuffer(storage=LazyTensorStorage(CAP), batch_size=4)
    assert rb == quiet and hash(rb) == hash(quiet)
    state = rb.init(batch((), 1, 0))
    key = jax.random.key(0)
    with pytest.warns(UserWarning, match=r"cannot sample.*0 transitions stored.*can_sample"):
        _, b, info = rb.sample(state, key)
    assert not np.asarray(info["mask"]).any() and not np.asarray(b["obs"]).any()  # the padding it warns about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.sample(state, key)  # off by default
        jax.jit(rb.sample)(state, key)  # traced: no effect
        full = rb.add(state, batch((), 3, 1))
        _, b, info = rb.sample(full, key)  # can sample: no warning
    assert np.asarray(info["mask"]).all()


def test_num_stored_past_2_31_is_not_negative():
    """A full buffer of 2 lanes x 1.1e9 steps: num_stored was -2,094,967,296 (int32 wrap). It is
    int32 below 2**31 items, else int64 under x64 or float32 (documented); len() is exact.
    Only the counters are built (no storage is allocated)."""
    from rlbuf.buffers.replay_buffer import BufferState

    storage = LazyTensorStorage(2_200_000_000, ndim=2)
    rb = ReplayBuffer(storage=storage, batch_size=8)
    layout = storage.layout({"x": jax.ShapeDtypeStruct((2, 1), jnp.uint8)})
    c = jnp.int32(1_100_000_000)
    state = BufferState(storage={}, cursor=c * 0, count=c, added=c, sampler=(), writer=(), layout=layout)
    got = jax.jit(rb.num_stored)(state)
    assert float(got) == np.float32(2_200_000_000) and len(state) == 2_200_000_000
    assert got.dtype == jnp.float32  # x64 is off in the tests
    small = dataclasses.replace(state, layout=dataclasses.replace(layout, capacity=1_000_000_000), count=c // 2)
    assert rb.num_stored(small).dtype == jnp.int32 and int(rb.num_stored(small)) == 1_100_000_000
    grouped = dataclasses.replace(state, count=jnp.full((4,), 1_100_000_000, jnp.int32))  # 4 groups
    assert float(rb.num_stored(grouped)) == np.float32(8_800_000_000) and len(grouped) == 8_800_000_000
