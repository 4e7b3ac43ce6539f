"""``SamplerWithoutReplacement``: every epoch visits each stored item exactly once, padding is
masked and zeroed, epochs reshuffle, growth mid-epoch waits for the next epoch."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import NumpyRingBuffer
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

# (lanes, capacity per lane, steps added): 12 stored items in every case; ndim=1 has wrapped.
SETUPS = {1: ((), 12, (7, 9)), 2: ((3,), 6, (4,)), 3: ((2, 2), 5, (3,))}
N_ITEMS = 12
CALLS = 9  # sample calls per run: 3 epochs of 3 batches (or 4.5 epochs of 2 with drop_last, bs=5)


def make(lanes, t, start):
    n = int(np.prod(lanes, dtype=np.int64)) if lanes else 1
    ids = start + np.arange(n * t, dtype=np.int32).reshape(*lanes, t)
    return {"id": jnp.asarray(ids), "x": {"v": jnp.asarray(ids, jnp.float32)[..., None] * jnp.ones(3)}}


_FNS: dict = {}


def fns(ndim, shuffle, drop_last, bs):
    key = (ndim, shuffle, drop_last, bs)
    if key not in _FNS:
        lanes, cap, _ = SETUPS[ndim]
        rb = ReplayBuffer(storage=LazyTensorStorage(cap * max(1, int(np.prod(lanes))), ndim=ndim),
                          sampler=SamplerWithoutReplacement(drop_last=drop_last, shuffle=shuffle), batch_size=bs)

        @jax.jit
        def run(state, key):
            def step(state, k):
                state, out, info = rb.sample(state, k)
                return state, (out, info["mask"])

            return jax.lax.scan(step, state, jax.random.split(key, CALLS))

        _FNS[key] = (rb, jax.jit(rb.add), run)
    return _FNS[key]


_FILLED: dict = {}


def filled(ndim, shuffle, drop_last, bs):
    """The buffer of ``fns(...)`` holding ``N_ITEMS`` items. The state is built once per ndim
    (with the add of one config): every config's state has the same structure and layout."""
    rb, _, run = fns(ndim, shuffle, drop_last, bs)
    if ndim not in _FILLED:
        base, add, _ = fns(ndim, True, False, 4)
        lanes, cap, adds = SETUPS[ndim]
        state = base.init(make(lanes, 1, 0))
        ref = NumpyRingBuffer(cap, lanes)
        start = 1
        for t in adds:
            b = make(lanes, t, start)
            start += b["id"].size
            state = add(state, b)
            ref.add(jax.tree_util.tree_map(np.asarray, b))
        assert len(ref) == N_ITEMS
        _FILLED[ndim] = (state, ref)
    state, ref = _FILLED[ndim]
    return rb, run, state, ref


# Full product for ndim=2; for ndim 1 and 3 a covering subset (each flag and both batch sizes)
# to bound compile time.
CONFIGS = [(2, sh, dl, bs) for sh in (True, False) for dl in (False, True) for bs in (4, 5)] + [
    (nd, sh, dl, bs) for nd in (1, 3) for sh, dl, bs in ((True, False, 5), (True, True, 4), (False, False, 4),
                                                        (False, True, 5))
]


@pytest.mark.parametrize(
    "ndim, shuffle, drop_last, bs", CONFIGS,
    ids=[f"ndim{c[0]}-{'shuffle' if c[1] else 'ordered'}-{'drop_last' if c[2] else 'keep_last'}-bs{c[3]}"
         for c in CONFIGS],
)
def test_each_epoch_returns_every_item_once(ndim, shuffle, drop_last, bs):
    rb, run, state, ref = filled(ndim, shuffle, drop_last, bs)
    assert bool(rb.can_sample(state))
    _, (out, mask) = run(state, jax.random.key(ndim * 100 + bs))
    ids, mask = np.asarray(out["id"]), np.asarray(mask)  # [CALLS, bs]
    v = np.asarray(out["x"]["v"])
    stored = np.sort(ref.items()["id"])
    # Padding: mask False and every leaf zeroed; real items carry their own data.
    assert not ids[~mask].any() and not v[~mask].any()
    np.testing.assert_array_equal(v[mask], ids[mask][:, None] * np.ones(3, np.float32))
    per_epoch = -(-N_ITEMS // bs) if not drop_last else N_ITEMS // bs
    n_epochs = CALLS // per_epoch
    orders = []
    for e in range(n_epochs):
        m = mask[e * per_epoch : (e + 1) * per_epoch]
        got = ids[e * per_epoch : (e + 1) * per_epoch][m]
        if drop_last:
            assert m.all()  # never padding: the short remainder is dropped
            assert len(got) == (N_ITEMS // bs) * bs and len(set(got.tolist())) == len(got)
            assert np.isin(got, stored).all()
        else:
            np.testing.assert_array_equal(np.sort(got), stored)  # each stored item exactly once
            assert m[:-1].all() and m[-1].sum() == N_ITEMS - (per_epoch - 1) * bs
        orders.append(got.tolist())
    if shuffle:
        assert all(a != b for a, b in itertools.combinations(orders, 2))  # epochs reshuffle
    else:
        assert all(a == orders[0] for a in orders)
        if not drop_last:
            # Storage order: lane-major, then physical slot.
            phys = jax.tree_util.tree_map(np.asarray, state.storage)["id"]
            np.testing.assert_array_equal(orders[0], phys[..., : int(state.count)].ravel())


def test_shuffle_is_uniform():
    """The first item of an epoch is uniform over the stored items (chi-square over 300 epochs)."""
    rb, _, state, ref = filled(2, True, False, 4)

    @jax.jit
    def firsts(state, key):
        def step(state, k):
            state, out, _ = rb.sample(state, k)
            return state, out["id"][0]

        return jax.lax.scan(step, state, jax.random.split(key, 900))[1][::3]

    got = np.asarray(firsts(state, jax.random.key(7)))
    counts = np.array([(got == i).sum() for i in ref.items()["id"]])
    assert counts.sum() == 300
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_growth_mid_epoch_waits_for_next_epoch():
    rb, add, _ = fns(2, True, False, 4)
    sample = jax.jit(rb.sample)
    lanes = (3,)
    state = add(rb.init(make(lanes, 1, 0)), make(lanes, 2, 1))  # 6 items: ids 1..6
    state, out, info = sample(state, jax.random.key(0))
    first = np.asarray(out["id"])[np.asarray(info["mask"])].tolist()
    assert len(first) == 4
    state = add(state, make(lanes, 2, 101))  # grows to 12 items without wrapping
    state, out, info = sample(state, jax.random.key(1))
    m = np.asarray(info["mask"])
    rest = np.asarray(out["id"])[m].tolist()
    assert m.sum() == 2  # the epoch of 6 ends: 2 items then padding; new items wait
    assert sorted(first + rest) == list(range(1, 7))
    seen = []
    for k in range(3):  # the next epoch covers all 12
        state, out, info = sample(state, jax.random.key(2 + k))
        assert np.asarray(info["mask"]).all()
        seen += np.asarray(out["id"]).tolist()
    assert sorted(seen) == list(range(1, 7)) + list(range(101, 107))


def test_overwritten_slot_returns_new_content():
    """Slots, not values, are what an epoch visits: an overwritten slot gives its new content."""
    rb, add, _ = fns(2, True, False, 4)
    sample = jax.jit(rb.sample)
    lanes, cap = (3,), 6
    state = add(rb.init(make(lanes, 1, 0)), make(lanes, cap, 1))  # full: 18 items
    slots = []
    for k in range(5):  # 18 items = 4 full batches + 2 items and padding
        if k == 2:
            state = add(state, make(lanes, 1, 1001))  # overwrites physical slot 0 of each lane
        state, out, info = sample(state, jax.random.key(10 + k))
        m = np.asarray(info["mask"])
        idx = tuple(np.asarray(i) for i in info["index"])
        np.testing.assert_array_equal(np.asarray(state.storage["id"])[idx][m], np.asarray(out["id"])[m])
        slots += list(zip(*(i[m] for i in idx)))
    assert sorted(slots) == sorted(itertools.product(range(3), range(cap)))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("ndim", [1, 3])
def test_empty_buffer_all_padding(ndim, drop_last):
    rb, _, run = fns(ndim, True, drop_last, 4)
    state = rb.init(make(SETUPS[ndim][0], 1, 0))
    assert not bool(rb.can_sample(state))
    _, (out, mask) = run(state, jax.random.key(0))
    assert not np.asarray(mask).any()
    assert not any(np.asarray(x).any() for x in jax.tree_util.tree_leaves(out))


def test_can_sample_drop_last_needs_a_full_batch():
    rb, add, _ = fns(2, True, True, 5)
    state = add(rb.init(make((3,), 1, 0)), make((3,), 1, 1))  # 3 items < 5
    assert not bool(rb.can_sample(state))
    state = add(state, make((3,), 1, 4))  # 6 items
    assert bool(rb.can_sample(state))


@pytest.mark.parametrize("steps", [2, 6])  # 6 items of 18 stored (filtered), 18 of 18 (full: no filter)
def test_epoch_is_the_stably_filtered_permutation(steps):
    """An epoch's order is ``jax.random.permutation`` of all slots with the unstored items moved
    last, order kept: a full buffer skips that second sort, with the same result."""
    rb, add, _ = fns(2, True, False, 4)
    state = add(rb.init(make((3,), 1, 0)), make((3,), steps, 1))
    key = jax.random.key(5)
    got = rb.sampler._new_epoch(state.ring, state.sampler, key)
    perm = np.asarray(jax.random.permutation(key, 18))
    n = 3 * steps
    want = np.concatenate([perm[perm < n], perm[perm >= n]])
    np.testing.assert_array_equal(np.asarray(got.perm), want)
    assert int(got.epoch_items) == n
