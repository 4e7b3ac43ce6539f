"""``LazyTensorStorage`` + ``RoundRobinWriter`` (through ``ReplayBuffer.add``) against the
numpy reference ring, and the storage's trace-time validation."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import NumpyRingBuffer

from rlbuf import _ring
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.storages import LazyTensorStorage

LANES = {1: (), 2: (3,), 3: (2, 2)}
CAPS = (5, 8)
# Time lengths: shorter than the ring, longer than any remaining space, longer than the ring.
T_LENS = (1, 3, 5, 11)

_CACHE: dict = {}


def make_batch(lanes, t, start):
    """Leaves ``[*lanes, t, ...]`` whose values identify (lane, step) uniquely."""
    n = int(np.prod(lanes, dtype=np.int64)) if lanes else 1
    ids = (start + np.arange(n * t).reshape(*lanes, t)).astype(np.int32)
    return {
        "obs": np.stack([ids, -ids], axis=-1).astype(np.float32),  # [*lanes, t, 2]
        "next": {"reward": ids * 0.5, "done": ids % 3 == 0},
        "id": ids,
    }


def buffer_for(ndim, cap):
    """(rb, jitted add) per config; jit keeps one executable per time length T."""
    key = (ndim, cap)
    if key not in _CACHE:
        lanes = LANES[ndim]
        rb = ReplayBuffer(storage=LazyTensorStorage(cap * _ring.n_lanes(lanes), ndim=ndim), batch_size=4)
        example = jax.tree_util.tree_map(jnp.asarray, make_batch(lanes, 1, 0))
        example["next"]["reward"] = example["next"]["reward"].astype(jnp.float32)
        _CACHE[key] = (rb, jax.jit(rb.add), example)
    return _CACHE[key]


def as_jax(batch):
    out = jax.tree_util.tree_map(jnp.asarray, batch)
    out["next"]["reward"] = out["next"]["reward"].astype(jnp.float32)
    return out


def check_against(state, ref, lanes):
    assert int(state.cursor) == ref.cursor
    assert int(state.count) == ref.count
    assert int(state.added) == ref.added
    storage = jax.tree_util.tree_map(np.asarray, state.storage)
    want_phys = ref.storage()
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b.astype(a.dtype)), storage, want_phys)
    # Age order through the ring helpers: rank r of every lane is physical(r). Ranks are passed
    # as a fixed-shape [capacity] array so the eager ops compile once per capacity.
    cap = state.layout.capacity
    phys = np.asarray(_ring.physical(np.arange(cap), state.cursor, state.count, cap))[: ref.count]
    ranks = np.asarray(_ring.logical(np.arange(cap), state.cursor, state.count, cap))
    np.testing.assert_array_equal(ranks[phys], np.arange(ref.count))
    ax = len(lanes)
    aged = jax.tree_util.tree_map(lambda x: np.take(x, phys, axis=ax), storage)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b.astype(a.dtype)), aged, ref.stored())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([1, 2, 3]),
    cap=st.sampled_from(CAPS),
    t_lens=st.lists(st.sampled_from(T_LENS), min_size=1, max_size=12),
)
def test_add_matches_numpy_reference(ndim, cap, t_lens):
    rb, add, example = buffer_for(ndim, cap)
    lanes = LANES[ndim]
    state = rb.init(example)
    ref = NumpyRingBuffer(cap, lanes)
    start = 1  # ids start at 1 so that a zero in storage always means "unwritten"
    for t in t_lens:
        batch = make_batch(lanes, t, start)
        start += batch["id"].size
        state = add(state, as_jax(batch))
        ref.add(batch)
        check_against(state, ref, lanes)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_many_wraparounds_and_varying_time_length(ndim):
    cap = 5
    rb, add, example = buffer_for(ndim, cap)
    lanes = LANES[ndim]
    state = rb.init(example)
    ref = NumpyRingBuffer(cap, lanes)
    start = 1
    # A fixed cycle of every T: the ring wraps many times with cursor at every offset.
    for t in T_LENS * 6:
        batch = make_batch(lanes, t, start)
        start += batch["id"].size
        state = add(state, as_jax(batch))
        ref.add(batch)
        check_against(state, ref, lanes)
    assert ref.added > 10 * cap
    assert add._cache_size() <= len(T_LENS) * len(CAPS)  # one executable per (cap, T), shared


# ---------------------------------------------------------------- validation


def _rb(ndim=2, max_size=24, batch_size=4):
    return ReplayBuffer(storage=LazyTensorStorage(max_size, ndim=ndim), batch_size=batch_size)


def _example():
    return {"obs": jnp.zeros((3, 2, 4), jnp.float32), "next": {"reward": jnp.zeros((3, 2), jnp.float32)}}


@pytest.fixture(scope="module")
def state2():
    return _rb().init(_example())


def _bad(mutate):
    b = _example()
    mutate(b)
    return b


@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda b: b["next"].pop("reward"), ValueError, r"missing.*'next', 'reward'"),
        (lambda b: b.__setitem__("extra", jnp.zeros((3, 2))), ValueError, r"unexpected.*'extra'"),
        (lambda b: b.__setitem__("obs", jnp.zeros((3, 2, 4), jnp.int32)), TypeError, r"'obs'.*int32.*float32"),
        (lambda b: b.__setitem__("obs", jnp.zeros((3, 2, 5), jnp.float32)), ValueError, r"'obs'.*\(3, 2, 5\)"),
        (lambda b: b.__setitem__("obs", jnp.zeros((3, 2), jnp.float32)), ValueError, r"'obs'.*\(3, 2\)"),
        (lambda b: b["next"].__setitem__("reward", jnp.zeros((4, 2))), ValueError, r"'next', 'reward'.*\(4, 2\)"),
        (lambda b: b["next"].__setitem__("reward", jnp.zeros((3, 5))), ValueError,
         r"(?=.*'next', 'reward').*time length"),
    ],
    ids=["missing_key", "extra_key", "wrong_dtype", "wrong_trailing_shape", "missing_trailing_dim",
         "wrong_lane_dims", "mismatched_time"],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_add_errors_name_the_key(state2, mutate, exc, pattern, jit):
    rb = _rb()
    add = jax.jit(rb.add) if jit else rb.add
    with pytest.raises(exc, match=pattern):
        add(state2, _bad(mutate))


def test_add_error_time_length_zero(state2):
    b = jax.tree_util.tree_map(lambda x: x[:, :0], _example())
    with pytest.raises(ValueError, match="time length 0"):
        _rb().add(state2, b)


def test_init_errors():
    with pytest.raises(ValueError, match="batch_size"):
        _rb(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        _rb(batch_size=-3)
    with pytest.raises(ValueError, match="max_size"):
        LazyTensorStorage(0)
    with pytest.raises(ValueError, match="ndim"):
        LazyTensorStorage(10, ndim=4)
    # max_size smaller than one time row of the 3 lanes
    with pytest.raises(ValueError, match=r"max_size=2 .*smaller than one time row.*3 lanes"):
        _rb(max_size=2).init(_example())
    # ndim=3 needs [W, B, T]: the reward leaf [3, 2] has fewer dims; the error names it
    with pytest.raises(ValueError, match=r"'next', 'reward'.*fewer than ndim=3"):
        _rb(ndim=3).init(_example())
    # leaves disagreeing on lane dims
    ex = _example()
    ex["next"]["reward"] = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"(?=.*'next', 'reward').*lane dims"):
        _rb().init(ex)


def test_rounding_warning_and_real_capacity():
    with pytest.warns(UserWarning, match=r"max_size=25 is not a multiple of the 3 lanes.*24 transitions"):
        state = _rb(max_size=25).init(_example())
    assert state.capacity == 24 and state.layout.capacity == 8
    for leaf in jax.tree_util.tree_leaves(state.storage):
        assert leaf.shape[:2] == (3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _rb(max_size=24).init(_example()).capacity == 24
    # ndim=1: no lanes, never rounded
    st1 = _rb(ndim=1, max_size=7).init({"x": jnp.zeros((2, 3))})
    assert st1.capacity == 7 and st1.storage["x"].shape == (7, 3)


def test_init_refuses_lanes_of_2_31_steps_naming_the_limit():
    """ndim=1 with max_size >= 2**31 (or a lane of that many steps) cannot be addressed by an
    int32 time index: refused at init, naming the limit (it used to die in the first add)."""
    example = {"x": jax.ShapeDtypeStruct((4,), jnp.uint8)}
    with pytest.raises(ValueError, match=r"2200000000 time steps per lane.*2\*\*31 - 1 = 2147483647.*ndim=2"):
        LazyTensorStorage(2_200_000_000).layout(example)
    with pytest.raises(ValueError, match=r"2147483648 time steps per lane"):
        LazyTensorStorage(2**32, ndim=2).layout({"x": jax.ShapeDtypeStruct((2, 4), jnp.uint8)})
    # 2 lanes of 1.1e9 steps (2.2e9 items) are addressable: no error, nothing allocated
    assert LazyTensorStorage(2_200_000_000, ndim=2).layout({"x": jax.ShapeDtypeStruct((2, 4), jnp.uint8)}).capacity \
        == 1_100_000_000
