"""``RandomSampler``: uniform over stored transitions (chi-square), never an unwritten slot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import NumpyRingBuffer
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.storages import LazyTensorStorage

LANES = {1: (), 2: (3,)}
CAP = 10
BATCH = 64
DRAWS = 200  # sample calls per test: 12800 items


def make(lanes, t, start):
    n = int(np.prod(lanes, dtype=np.int64)) if lanes else 1
    ids = start + np.arange(n * t, dtype=np.int32).reshape(*lanes, t)
    return {"id": ids, "x": ids.astype(np.float32)[..., None] * np.ones(2, np.float32)}


_FNS: dict = {}


def fns(ndim):
    if ndim not in _FNS:
        rb = ReplayBuffer(storage=LazyTensorStorage(CAP * max(1, int(np.prod(LANES[ndim]))), ndim=ndim),
                          sampler=RandomSampler(), batch_size=BATCH)

        @jax.jit
        def draw(state, key):
            # DRAWS independent sample calls, vmapped: ids and the time index of each item.
            def one(k):
                _, out, info = rb.sample(state, k)
                t = info["index"] if ndim == 1 else info["index"][-1]
                return out["id"], t, info["mask"]

            return jax.vmap(one)(jax.random.split(key, DRAWS))

        _FNS[ndim] = (rb, jax.jit(rb.add), draw)
    return _FNS[ndim]


@pytest.mark.parametrize("adds", [(7,), (4, 9, 5, 8)], ids=["partial", "wrapped"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_uniform_over_stored_items(ndim, adds):
    rb, add, draw = fns(ndim)
    lanes = LANES[ndim]
    state = rb.init(jax.tree_util.tree_map(jnp.asarray, make(lanes, 1, 0)))
    ref = NumpyRingBuffer(CAP, lanes)
    start = 1
    for t in adds:
        b = make(lanes, t, start)
        start += b["id"].size
        state = add(state, jax.tree_util.tree_map(jnp.asarray, b))
        ref.add(b)
    assert (ref.count < CAP) == (adds == (7,))
    ids, t, mask = (np.asarray(a).ravel() for a in draw(state, jax.random.key(sum(adds) + ndim)))
    assert mask.all()
    assert (t < ref.count).all()  # never an unwritten slot
    stored = ref.items()["id"]
    assert np.isin(ids, stored).all()
    counts = np.array([(ids == i).sum() for i in stored])
    assert counts.sum() == ids.size
    _, p = stats.chisquare(counts)  # H0: uniform over the stored items
    assert p > 1e-3, (p, counts)


def test_chi_square_detects_nonuniform():
    """Sanity check of the statistic's power at this sample size: a 1.5x over-weighted item is caught."""
    rng = np.random.default_rng(0)
    w = np.ones(30)
    w[0] = 1.5
    draws = rng.choice(30, size=BATCH * DRAWS, p=w / w.sum())
    assert stats.chisquare(np.bincount(draws, minlength=30)).pvalue < 1e-3


@pytest.mark.parametrize("ndim", [1, 2])
def test_empty_buffer_masks_everything(ndim):
    rb, _, draw = fns(ndim)
    state = rb.init(jax.tree_util.tree_map(jnp.asarray, make(LANES[ndim], 1, 0)))
    assert not bool(rb.can_sample(state))
    ids, _, mask = draw(state, jax.random.key(0))
    assert not np.asarray(mask).any() and not np.asarray(ids).any()


# ---------------------------------------------------------------- buffers near and past 2**31 items
def big_ring(lanes, per_lane, count):
    """A ring over ``lanes`` lanes of ``per_lane`` steps holding ``count`` steps each: only the
    layout and counters, no storage (the sampler never reads it)."""
    from rlbuf._ring import Ring

    n = int(np.prod(lanes))
    layout = LazyTensorStorage(n * per_lane, ndim=len(lanes) + 1).layout(
        {"x": jax.ShapeDtypeStruct((*lanes, 1), jnp.uint8)})
    c = jnp.int32(count)
    return Ring(cursor=c % per_lane, count=c, added=c, layout=layout)


_big_draw = jax.jit(lambda ring, key: RandomSampler().sample(ring, (), key, 65_536)[1])


@pytest.mark.parametrize("per_lane,count", [(900_000_000, 900_000_000),      # 1.8e9 items: one draw
                                            (1_100_000_000, 1_100_000_000),  # 2.2e9 items, full
                                            (1_500_000_000, 700_000_000)])   # 3e9 slots, 1.4e9 stored
def test_uniform_near_and_past_2_31_items(per_lane, count):
    """Lanes split 50/50 and slots are uniform over [0, count) (randint gave 19,021 vs 13,747
    between 2 lanes of 9e8; past 2**31 items every draw was (0, 0))."""
    lane, t = map(lambda a: np.asarray(a, np.int64), _big_draw(big_ring((2,), per_lane, count), jax.random.key(3)))
    assert lane.min() == 0 and lane.max() == 1 and t.min() >= 0 and t.max() < count
    assert stats.chisquare(np.bincount(lane, minlength=2)).pvalue > 1e-4
    assert stats.chisquare(np.bincount(t * 4 // count, minlength=4)).pvalue > 1e-4
    assert len(np.unique(t)) > 65_000  # not a constant index
