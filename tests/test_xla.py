"""``rlbuf._xla``: each trick computes the same values in its CPU and generic forms, and
``run_at_most_once`` runs its body exactly when asked, also under ``vmap``, as a loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf import _xla
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage


def test_run_at_most_once_runs_the_body_when_asked():
    body = lambda c, d: c + d  # noqa: E731
    assert int(_xla.run_at_most_once(jnp.bool_(True), body, jnp.int32(1), (jnp.int32(5),))) == 6
    assert int(_xla.run_at_most_once(jnp.bool_(False), body, jnp.int32(1), (jnp.int32(5),))) == 1
    f = jax.vmap(lambda p, c: _xla.run_at_most_once(p, lambda x: x * 10, c))
    np.testing.assert_array_equal(f(jnp.array([True, False, True]), jnp.array([1, 2, 3])), [10, 2, 30])
    prims = [e.primitive.name for e in jax.make_jaxpr(f)(jnp.array([True]), jnp.array([1])).jaxpr.eqns]
    assert "while" in prims and "select_n" not in prims[: prims.index("while")]


def test_materialize_returns_its_values_through_a_zero_trip_loop():
    """materialize is the identity (CPU form: a loop on the first element's sign), also under vmap
    and with an empty first leaf; values after the first leaf may be negative."""
    xs = (jnp.array([[0, 3], [7, 2]], jnp.int32), jnp.array([-1.5, 2.0]), jnp.array([True, False]))
    for generic in (False, True):
        with _xla.generic_forms(generic):
            # (fresh lambdas: jax caches traces per function, and the form is chosen at trace time)
            for got, want in zip(jax.jit(lambda x: _xla.materialize(x))(xs), xs):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(jax.jit(jax.vmap(lambda x: _xla.materialize(x)))(xs[0]), xs[0])
            assert jax.jit(lambda x: _xla.materialize(x))(jnp.zeros((0, 3), jnp.int32)).shape == (0, 3)
            prims = [e.primitive.name for e in jax.make_jaxpr(lambda x: _xla.materialize(x))(xs).jaxpr.eqns]
            assert ("while" in prims) == (not generic)


def test_below_is_in_range_and_wrap_once_is_a_modulo():
    bits = jax.random.bits(jax.random.key(0), (10_000,), jnp.uint32)
    for n in (1, 3, 1000, 2**31 - 1):
        u = np.asarray(_xla.below(bits, jnp.full((10_000,), n, jnp.int32)))
        assert u.min() >= 0 and u.max() < n
    x = jnp.arange(20, dtype=jnp.int32)
    for generic in (False, True):
        with _xla.generic_forms(generic):
            np.testing.assert_array_equal(jax.jit(lambda x: _xla.wrap_once(x, 10))(x), np.arange(20) % 10)


def _cumsum(m):
    return np.cumsum(m, axis=-1)


def _cummax_of_positions(m):
    return np.maximum.accumulate(np.where(m, np.arange(m.shape[-1]), -1), axis=-1)


@pytest.mark.parametrize("fn, reference, seed", [(_xla.count_true, _cumsum, 0),
                                                 (_xla.last_true, _cummax_of_positions, 1)])
def test_running_mask_op_matches_numpy_in_both_forms(fn, reference, seed):
    """count_true is a cumsum, last_true a cummax of the True positions, in the CPU (packed
    words) and generic forms, also under vmap."""
    rng = np.random.default_rng(seed)
    for shape in [(3, 1), (2, 31), (2, 33), (4, 1000), (2, 3, 65), (2, 2049)]:  # 2049: > 64 words
        for p in (0.0, 0.01, 0.05, 0.5, 1.0):
            m = rng.random(shape) < p
            want = reference(m)
            for generic in (False, True):
                with _xla.generic_forms(generic):
                    got = jax.jit(fn)(m)
                    assert got.dtype == jnp.int32
                    np.testing.assert_array_equal(got, want)
                    np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(m), want)


def _run(rb, data, generic):
    with _xla.generic_forms(generic):
        add, sample = jax.jit(rb.add), jax.jit(rb.sample)
        state = add(rb.init(data), data)
        outs = []
        for i in range(3):
            state, batch, info = sample(state, jax.random.key(i))
            outs.append((batch, info))
            if "weight" in info:
                state = jax.jit(rb.update_priority)(state, info["index"], jnp.arange(info["weight"].size) % 5)
            state = add(state, data)
        return outs


@pytest.mark.parametrize("which", ["slice", "prioritized"])
def test_cpu_and_generic_forms_sample_the_same(which):
    if which == "slice":
        rb = ReplayBuffer(storage=LazyTensorStorage(4 * 16, ndim=2), sampler=SliceSampler(slice_len=3, traj_key="ep"),
                          batch_size=12)
        data = {"ep": jnp.asarray(np.arange(4 * 7).reshape(4, 7) // 4, jnp.int32)}
    else:
        rb = ReplayBuffer(storage=LazyTensorStorage(100), sampler=PrioritizedSampler(100, 0.7, 0.5), batch_size=16)
        data = {"ep": jnp.arange(30, dtype=jnp.int32)}
    for a, b in zip(jax.tree_util.tree_leaves(_run(rb, data, False)), jax.tree_util.tree_leaves(_run(rb, data, True))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_below_is_unbiased_near_2_31():
    """``below`` at ranges near 2**31 (where ``jax.random.randint`` is biased: 58% of its draws
    fall below n / 2 for n = 1.8e9): quarters and halves of the range are equally likely
    (chi-square), for n = 1.8e9 and n = 2**31 - 1. No buffer is allocated: the draws are indices."""
    from scipy import stats

    draw = jax.jit(lambda key, n: _xla.below(jax.random.bits(key, (400_000,), jnp.uint32), n))
    for n in (1_800_000_000, 2**31 - 1):
        u = np.asarray(draw(jax.random.key(n % 997), jnp.int32(n)), np.int64)
        assert u.min() >= 0 and u.max() < n
        quarters = np.bincount(u * 4 // n, minlength=4)
        assert stats.chisquare(quarters).pvalue > 1e-4, quarters
        halves = np.bincount(u * 2 // n, minlength=2)
        assert abs(halves[0] / u.size - 0.5) < 0.005, halves  # randint: 0.58 at n = 1.8e9


@pytest.mark.parametrize("generic", [False, True])
def test_take_few_reads_the_indexed_points(generic):
    # [4, 9000, 2] (>= TAKE_FEW_MIN_SIZE elements): 4 points (dynamic slices on CPU) and 12 (a gather)
    arr = np.arange(4 * 9000 * 2, dtype=np.int32).reshape(4, 9000, 2)
    rng = np.random.default_rng(0)
    for k in (1, 3):
        cols = rng.integers(0, 9000, (4, k)).astype(np.int32)
        lanes = np.arange(4, dtype=np.int32)[:, None]
        with _xla.generic_forms(generic):
            got = jax.jit(lambda *a: _xla.take_few(*a))(jnp.asarray(arr), jnp.asarray(lanes), jnp.asarray(cols))
        np.testing.assert_array_equal(np.asarray(got), arr[lanes, cols])
        assert got.shape == (4, k, 2)


@pytest.mark.parametrize("generic", [False, True])
def test_take_columns_reads_the_indexed_entries(generic):
    """take_columns is arr[idx] (one trailing column at a time on CPU), also under vmap."""
    # [4, 12000, 3] int32: 576 KB (>= GATHER_SPLIT_BYTES), a column 192 KB: split on CPU
    arr = np.arange(4 * 12000 * 3, dtype=np.int32).reshape(4, 12000, 3)
    rng = np.random.default_rng(1)
    lanes = rng.integers(0, 4, 32).astype(np.int32)
    cols = rng.integers(0, 12000, 32).astype(np.int32)
    with _xla.generic_forms(generic):
        got = jax.jit(lambda *a: _xla.take_columns(*a))(jnp.asarray(arr), jnp.asarray(lanes), jnp.asarray(cols))
        two = cols[:8].reshape(4, 2)
        per_group = jax.jit(jax.vmap(lambda a, c: _xla.take_columns(a, c)))(jnp.asarray(arr), jnp.asarray(two))
    np.testing.assert_array_equal(np.asarray(got), arr[lanes, cols])
    np.testing.assert_array_equal(np.asarray(per_group), arr[np.arange(4)[:, None], two])


_WIN_CAP = 20_000  # [4, 20000, 2] int32: 640 KB (>= LANE_WINDOWS_MIN_BYTES): windowed on CPU


def _window_roundtrip(arr, starts, slots, values, probes):
    # Window 0 (width 8) is written at `slots`, window 1 (width 6) is read-only; `probes` are read
    # from either after the write.
    win = _xla.lane_windows(arr, [(starts[:, 0], 8), (starts[:, 1], 6)])
    win = win.set(slots, values)
    return win.put(arr), win.take(probes)


@pytest.mark.parametrize("generic", [False, True])
def test_lane_windows_read_and_write_the_ring_slots(generic):
    """Windows that wrap past the ring's end, overlap each other and the wrapped copy: the updated
    ring and the values read after the write are those of a plain ``[L, C]`` scatter and gather."""
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 1000, (4, _WIN_CAP, 2)).astype(np.int32)
    # lane 0: plain; 1: window 0 wraps; 2: both wrap and overlap; 3: window 0 at slot 0, window 1 inside it
    starts = np.array([[100, 3000], [_WIN_CAP - 3, 50], [_WIN_CAP - 2, _WIN_CAP - 4], [0, 2]], np.int32)
    offs = np.stack([rng.permutation(8)[:5] for _ in range(4)])
    slots = ((starts[:, :1] + offs) % _WIN_CAP).astype(np.int32)
    slots[0, 0] = _WIN_CAP  # dropped
    values = rng.integers(-1000, 0, (4, 5, 2)).astype(np.int32)
    probes = np.concatenate([(starts[:, :1] + rng.integers(0, 8, (4, 3))) % _WIN_CAP,
                             (starts[:, 1:] + rng.integers(0, 6, (4, 3))) % _WIN_CAP], axis=1).astype(np.int32)
    want = arr.copy()
    for lane in range(4):
        keep = slots[lane] < _WIN_CAP
        want[lane, slots[lane, keep]] = values[lane, keep]
    with _xla.generic_forms(generic):
        out, got = jax.jit(_window_roundtrip)(arr, starts, slots, values, probes)
        windowed = _xla.lane_windows(jnp.asarray(arr), [(jnp.asarray(starts[:, 0]), 8)]).windowed
    assert windowed == (not generic and jax.default_backend() == "cpu")
    np.testing.assert_array_equal(np.asarray(out), want)
    np.testing.assert_array_equal(np.asarray(got), want[np.arange(4)[:, None], probes])
