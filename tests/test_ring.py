"""``rlbuf._ring`` against brute force: a ring that has received ``A`` steps per lane holds
step ``i`` (for ``A - min(A, C) <= i < A``) in physical slot ``i % C``."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf import _ring

CAPS = (1, 2, 5, 7)


def ring_after(added, cap):
    """(cursor, count, step held by each slot or -1) after ``added`` steps."""
    held = np.full(cap, -1)
    for i in range(max(added - cap, 0), added):
        held[i % cap] = i
    return added % cap, min(added, cap), held


@pytest.mark.parametrize("cap", CAPS)
def test_write_positions_matches_per_step_writes(cap):
    added = np.arange(3 * cap + 1)[:, None]  # every cursor, several times
    cursor = jnp.asarray(added % cap, jnp.int32)
    for t in range(1, 3 * cap + 2):
        pos, skip, new_cursor = _ring.write_positions(cursor, t, cap)
        pos = np.asarray(pos)
        assert skip == max(t - cap, 0)
        assert pos.shape == (added.shape[0], min(t, cap))
        assert all(len(set(row.tolist())) == pos.shape[1] for row in pos)
        # Step j of the data (j >= skip) lands where a per-step writer would put it.
        np.testing.assert_array_equal(pos, (added + np.arange(skip, t)[None, :]) % cap)
        np.testing.assert_array_equal(np.asarray(new_cursor), (added + t) % cap)


@pytest.mark.parametrize("cap", CAPS)
def test_logical_physical_age_order(cap):
    for added in range(3 * cap + 1):
        cursor, count, held = ring_after(added, cap)
        slots = np.arange(cap)
        rank = np.asarray(_ring.logical(jnp.asarray(slots), cursor, count, cap))
        written = held >= 0
        # Age rank of a written slot = its step's position among the stored steps.
        np.testing.assert_array_equal(rank[written], held[written] - (added - count))
        ranks = np.arange(count)
        phys = np.asarray(_ring.physical(jnp.asarray(ranks), cursor, count, cap))
        np.testing.assert_array_equal(held[phys], np.arange(added - count, added))
        np.testing.assert_array_equal(np.asarray(_ring.logical(jnp.asarray(phys), cursor, count, cap)), ranks)
        assert int(_ring.oldest(cursor, count, cap)) == (phys[0] if count else 0)


@pytest.mark.parametrize("cap", CAPS)
def test_window_fits_brute_force(cap):
    for added in range(3 * cap + 1):
        cursor, count, held = ring_after(added, cap)
        t = np.arange(cap)[:, None]
        n = np.arange(1, cap + 2)[None, :]
        got = np.asarray(_ring.window_fits(jnp.asarray(t), jnp.asarray(n), cursor, count, cap))
        for ti in range(cap):
            for ni in range(1, cap + 2):
                s = held[ti]
                want = (
                    s >= 0
                    and ni <= cap
                    and all(held[(ti + j) % cap] == s + j for j in range(ni))
                )
                assert got[ti, ni - 1] == want, (added, ti, ni)


@pytest.mark.parametrize("lanes", [(), (3,), (2, 4)])
def test_flat_unflatten_lane_index(lanes):
    cap = 5
    dims = (*lanes, cap)
    grid = np.indices(dims).reshape(len(dims), -1)
    flat = np.asarray(_ring.flat_index(tuple(jnp.asarray(g) for g in grid), lanes, cap))
    np.testing.assert_array_equal(flat, np.ravel_multi_index(tuple(grid), dims))
    back = _ring.unflatten_index(jnp.asarray(flat), lanes, cap)
    assert len(back) == len(dims)
    for b, g in zip(back, grid):
        np.testing.assert_array_equal(np.asarray(b), g)
    n = _ring.n_lanes(lanes)
    assert n == int(np.prod(lanes, dtype=np.int64))
    if lanes:
        idx = _ring.lane_index(jnp.arange(n), lanes)
        want = np.unravel_index(np.arange(n), lanes)
        for a, w in zip(idx, want):
            np.testing.assert_array_equal(np.asarray(a), w)


@pytest.mark.parametrize("lanes", [(), (3,), (2, 4)])
def test_item_index_is_lane_major(lanes):
    n = _ring.n_lanes(lanes)
    for count in (1, 2, 5):
        items = np.arange(n * count)
        got = _ring.item_index(jnp.asarray(items, jnp.int32), jnp.int32(count), lanes)
        want = np.unravel_index(items, (*lanes, count))
        assert len(got) == len(lanes) + 1
        for a, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), w)


# ---------------------------------------------------------------- near 2**31 steps per lane
BIG = 2**31 - 1 - 5  # a lane of ~2**31 steps: sums of two slots overflow int32


def test_write_positions_no_overflow_near_int32_limit():
    # cursor near the end of a lane of BIG steps: positions wrap to 0 (an int32 sum would go negative).
    for cursor, t in ((BIG - 3, 20), (BIG - 1, 12), (0, 5), (BIG - 10, 16)):
        pos, skip, new = _ring.write_positions(jnp.int32(cursor), t, BIG)
        want = (cursor + np.arange(t, dtype=np.int64)) % BIG
        np.testing.assert_array_equal(np.asarray(pos, np.int64), want)
        assert skip == 0 and int(new) == (cursor + t) % BIG


def test_counts_and_age_ranks_no_overflow_near_int32_limit():
    count = jnp.int32(BIG)
    assert int(_ring.add_count(jnp.int32(BIG - 2), 7, BIG)) == BIG  # min(count + n, cap)
    assert int(_ring.add_count(jnp.int32(5), 7, BIG)) == 12
    cursor = jnp.int32(BIG - 3)  # full ring: oldest slot is the cursor
    ranks = jnp.asarray([0, 1, 2, 3, 10, BIG - 1], jnp.int32)
    want = (BIG - 3 + np.asarray(ranks, np.int64)) % BIG
    np.testing.assert_array_equal(np.asarray(_ring.physical(ranks, cursor, count, BIG), np.int64), want)
    np.testing.assert_array_equal(np.asarray(_ring.physical_near(ranks, cursor, count, BIG), np.int64), want)
    np.testing.assert_array_equal(np.asarray(_ring.logical(jnp.asarray(want, jnp.int32), cursor, count, BIG)), ranks)
    # a window of 8 steps starting 4 steps before the newest crosses the head; one 8 before fits
    newest = int((BIG - 4) % BIG)
    t = jnp.asarray([newest - 4, newest - 7], jnp.int32)
    assert _ring.window_fits(t, 8, cursor, count, BIG).tolist() == [False, True]


def test_flat_index_refuses_more_than_int32_positions():
    with pytest.raises(ValueError, match=r"2 lanes x 1100000000 steps.*int32"):
        _ring.flat_index((jnp.int32(1), jnp.int32(0)), (2,), 1_100_000_000)
