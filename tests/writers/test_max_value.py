"""MaxValueWriter against a plain-python top-k model: kept items, tie rule, the [0, count)
invariant, batches longer than the buffer, reductions, errors, compile once, and use with
PrioritizedSampler; with lanes (ndim 2/3) the same model per lane, per-worker buffers, and
per-lane max priorities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage
from rlbuf.writers import MaxValueWriter, TensorDictMaxValueWriter

CAP = 6


class TopK:
    """Reference: slots hold (rank, item_id); each add keeps the top-CAP of stored ∪ new by
    (rank desc, stored before new, slot / data order asc); NaN ranks count as -inf."""

    def __init__(self, cap):
        self.cap = cap
        self.slots = []  # (rank, id), slot = list position

    def add(self, ranks, ids):
        ranks = [(-np.inf if np.isnan(r) else r) for r in ranks]
        cands = [(-r, 0, s, ("old", s)) for s, (r, _) in enumerate(self.slots)]
        cands += [(-r, 1, j, ("new", j)) for j, r in enumerate(ranks)]
        keep = sorted(cands)[: self.cap]
        kept_old = {k[3][1] for k in keep if k[3][0] == "old"}
        new_items = sorted(k[3][1] for k in keep if k[3][0] == "new")
        free = [s for s in range(len(self.slots)) if s not in kept_old] + list(range(len(self.slots), self.cap))
        slots = list(self.slots) + [None] * (self.cap - len(self.slots))
        for slot, j in zip(free, new_items):
            slots[slot] = (ranks[j], ids[j])
        self.slots = [x for x in slots if x is not None]
        assert len(self.slots) == min(self.cap, len(self.slots))


@functools.lru_cache(maxsize=None)
def setup(reduction="sum"):
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), writer=MaxValueWriter(("next", "reward"), reduction),
                      batch_size=4)
    example = {"id": jnp.zeros((1,), jnp.int32), "next": {"reward": jnp.zeros((1, 2), jnp.float32)}}
    return rb, example, jax.jit(rb.add)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    adds=st.lists(
        st.tuples(st.sampled_from([1, 3, 8]), st.data()),
        min_size=1,
        max_size=5,
    ),
    reduction=st.sampled_from(["sum", "max", "min", "mean", "median"]),
)
def test_against_reference(adds, reduction):
    rb, example, add = setup(reduction)
    s = rb.init(example)
    ref = TopK(CAP)
    next_id = 0
    for t, draw in adds:
        r = np.array(draw.draw(st.lists(st.lists(st.sampled_from([-1.0, 0.0, 1.0, 2.5, np.nan, -np.inf]),
                                                 min_size=2, max_size=2), min_size=t, max_size=t)), np.float32)
        ids = np.arange(next_id, next_id + t, dtype=np.int32)
        next_id += t
        s = add(s, {"id": jnp.asarray(ids), "next": {"reward": jnp.asarray(r)}})
        # median: TorchRL's lower median (of 2 values, the smaller; NaN sorts last)
        red = np.sort(r, 1)[:, 0] if reduction == "median" else getattr(np, reduction)(r, 1)
        ref.add(list(red), list(ids))
        count = int(s.count)
        assert count == len(ref.slots)
        got_ids = np.asarray(s.storage["id"])[:count]
        np.testing.assert_array_equal(got_ids, [i for _, i in ref.slots])
        # Unwritten slots stay zero: the written slots are exactly [0, count).
        assert not np.asarray(s.storage["next"]["reward"])[count:].any()
    assert add._cache_size() <= 3  # one compile per add length (1, 3, 8)


def test_keeps_top_k_of_a_long_batch_and_ties():
    rb, example, add = setup()
    s = rb.init(example)
    rew = np.array([[1, 0], [5, 0], [3, 0], [5, 0], [2, 0], [9, 0], [3, 0], [3, 0], [0, 0], [4, 0]], np.float32)
    s = add(s, {"id": jnp.arange(10, dtype=jnp.int32), "next": {"reward": jnp.asarray(rew)}})
    ids = sorted(np.asarray(s.storage["id"]).tolist())
    # ranks 9,5,5,4,3,3 -> ids 5,1,3,9 and the first two 3s (ids 2, 6)
    assert ids == [1, 2, 3, 5, 6, 9] and int(s.count) == CAP
    # A tie with stored items does not evict them; a larger rank evicts the lowest.
    s2 = add(s, {"id": jnp.array([100], jnp.int32), "next": {"reward": jnp.array([[3.0, 0.0]])}})
    assert sorted(np.asarray(s2.storage["id"]).tolist()) == ids
    s3 = add(s, {"id": jnp.array([100], jnp.int32), "next": {"reward": jnp.array([[3.5, 0.0]])}})
    assert sorted(np.asarray(s3.storage["id"]).tolist()) == [1, 2, 3, 5, 9, 100]


def test_with_prioritized_sampler_new_slots_get_max_priority():
    rb = ReplayBuffer(storage=LazyTensorStorage(4), writer=TensorDictMaxValueWriter(),
                      sampler=PrioritizedSampler(4, 1.0, 1.0, eps=0.0), batch_size=4)
    s = rb.init({"next": {"reward": jnp.zeros((1,))}})
    add = jax.jit(rb.add)
    s = add(s, {"next": {"reward": jnp.array([1.0, 2.0, 3.0, 4.0])}})
    s = jax.jit(rb.update_priority)(s, jnp.arange(4), jnp.array([0.0, 0.0, 7.0, 0.0]))
    s = add(s, {"next": {"reward": jnp.array([10.0, 0.5])}})  # evicts slot 0 (rank 1)
    leaves = np.asarray(s.sampler.tree.sums[-1][:4])
    np.testing.assert_allclose(leaves, [7.0, 0.0, 7.0, 0.0])
    _, batch, _ = jax.jit(rb.sample)(s, jax.random.key(0))
    assert set(np.asarray(batch["next"]["reward"]).tolist()) <= {10.0, 3.0}


def test_errors():
    with pytest.raises(ValueError, match="reduction must be one of"):
        MaxValueWriter(reduction="prod")
    rb = ReplayBuffer(storage=LazyTensorStorage(8, ndim=2), writer=MaxValueWriter(), batch_size=2,
                      sampler=SliceSampler(slice_len=2, traj_key="ep"))
    with pytest.raises(ValueError, match=r"SliceSampler needs a writer that provides \['time_order'\]"):
        rb.init({"ep": jnp.zeros((2, 1)), "next": {"reward": jnp.zeros((2, 1))}})
    rb = ReplayBuffer(storage=LazyTensorStorage(8, ndim=2, compact_next=True), writer=MaxValueWriter(), batch_size=2)
    with pytest.raises(ValueError, match=r"LazyTensorStorage \(as configured\) needs a writer"):
        rb.init({"obs": jnp.zeros((2, 1)), "next": {"obs": jnp.zeros((2, 1)), "reward": jnp.zeros((2, 1))}})
    rb = ReplayBuffer(storage=LazyTensorStorage(8), writer=MaxValueWriter(), batch_size=2)
    with pytest.raises(ValueError, match=r"rank_key \('next', 'reward'\) is not stored"):
        rb.init({"reward": jnp.zeros((1,))})


# ------------------------------------------------------------------------- lanes (ndim > 1)
LANES = {2: (3,), 3: (2, 2)}


@functools.lru_cache(maxsize=None)
def setup_lanes(ndim, reduction):
    lanes = LANES[ndim]
    rb = ReplayBuffer(storage=LazyTensorStorage(int(np.prod(lanes)) * CAP, ndim=ndim),
                      writer=MaxValueWriter("score", reduction), sampler=RandomSampler(), batch_size=16)
    example = {"id": jnp.zeros((*lanes, 1), jnp.int32), "score": jnp.zeros((*lanes, 1, 2), jnp.float32)}
    return rb, example, jax.jit(rb.add), jax.jit(rb.sample)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([2, 3]),
    adds=st.lists(st.tuples(st.sampled_from([1, 3, 7]), st.data()), min_size=1, max_size=5),
    reduction=st.sampled_from(["sum", "max", "min", "mean", "median"]),
)
def test_lanes_against_per_lane_reference(ndim, adds, reduction):
    """Items ``[*lanes, T]``: each lane keeps the top CAP of its own stored and new items (the
    one-lane reference per lane, same tie rule); all lanes share ``count`` and keep the
    ``[0, count)`` invariant; unwritten slots stay zero; a sample reads stored items only."""
    rb, example, add, sample = setup_lanes(ndim, reduction)
    lanes = LANES[ndim]
    n = int(np.prod(lanes))
    s = rb.init(example)
    refs = [TopK(CAP) for _ in range(n)]
    seq = 0
    for t, draw in adds:
        score = np.array(draw.draw(st.lists(st.sampled_from([-1.0, 0.0, 1.0, 2.5, np.nan, -np.inf]),
                                            min_size=n * t * 2, max_size=n * t * 2)), np.float32).reshape(n, t, 2)
        ids = (1000 * np.arange(n)[:, None] + seq + np.arange(t)[None, :]).astype(np.int32)  # (lane, item)
        seq += t
        s = add(s, {"id": jnp.asarray(ids.reshape(*lanes, t)), "score": jnp.asarray(score.reshape(*lanes, t, 2))})
        red = np.sort(score, -1)[..., 0] if reduction == "median" else getattr(np, reduction)(score, -1)
        for lane in range(n):
            refs[lane].add(list(red[lane]), list(ids[lane]))
        count = int(s.count)
        stored = np.asarray(s.storage["id"]).reshape(n, CAP)
        scores = np.asarray(s.storage["score"]).reshape(n, CAP, 2)
        for lane in range(n):
            assert count == len(refs[lane].slots)
            want = [i for _, i in refs[lane].slots]
            np.testing.assert_array_equal(stored[lane, :count], want, err_msg=f"lane {lane}")
            assert not stored[lane, count:].any() and not scores[lane, count:].any()
    _, batch, info = sample(s, jax.random.key(seq))
    idx = tuple(np.asarray(i) for i in info["index"])
    np.testing.assert_array_equal(np.asarray(s.storage["id"])[idx], batch["id"])
    assert (idx[-1] < int(s.count)).all()
    np.testing.assert_array_equal(np.asarray(batch["id"]) // 1000, np.ravel_multi_index(idx[:-1], lanes))


def test_lanes_prioritized_new_slots_get_max_priority_per_lane():
    """ndim=2: a prioritized sampler gives max priority to the slots each lane wrote, and only
    to those (a lane whose items were all evicted-against keeps its leaves)."""
    rb = ReplayBuffer(storage=LazyTensorStorage(2 * 3, ndim=2), writer=MaxValueWriter("score"),
                      sampler=PrioritizedSampler(6, 1.0, 1.0, eps=0.0), batch_size=8)
    add = jax.jit(rb.add)
    s = add(rb.init({"score": jnp.zeros((2, 1))}), {"score": jnp.array([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])})
    s = jax.jit(rb.update_priority)(s, (jnp.array([0, 0, 0, 1, 1, 1]), jnp.array([0, 1, 2, 0, 1, 2])),
                                    jnp.array([0.0, 0.5, 0.0, 0.25, 0.0, 4.0]))
    s = add(s, {"score": jnp.array([[9.0], [0.0]])})  # lane 0 evicts its slot 0 (rank 1); lane 1 keeps all
    assert np.asarray(s.storage["score"]).tolist() == [[9.0, 2.0, 3.0], [5.0, 6.0, 7.0]]
    np.testing.assert_allclose(np.asarray(s.sampler.tree.sums[-1][:6]), [4.0, 0.5, 0.0, 0.25, 0.0, 4.0])
    _, batch, info = jax.jit(rb.sample)(s, jax.random.key(0))
    assert set(np.asarray(batch["score"]).tolist()) <= {9.0, 2.0, 5.0, 7.0}


def test_lanes_per_worker_equals_plain_lanes():
    """Lanes rank alone, so ``PerWorkerReplayBuffer`` (W workers of L lanes) stores exactly what
    one plain buffer of W*L lanes stores for the same items."""
    from rlbuf.scaling.sharding import PerWorkerReplayBuffer

    W, L = 2, 2
    writer = MaxValueWriter("score", "max")
    prb = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(W * L * CAP, ndim=2), writer=writer,
                                             batch_size=4), W)
    plain = ReplayBuffer(storage=LazyTensorStorage(W * L * CAP, ndim=2), writer=writer, batch_size=4)
    rng = np.random.default_rng(0)
    ex = {"score": jnp.zeros((L, 1, 3)), "id": jnp.zeros((L, 1), jnp.int32)}
    ps, s = prb.init(ex), plain.init({"score": jnp.zeros((W * L, 1, 3)), "id": jnp.zeros((W * L, 1), jnp.int32)})
    for i, t in enumerate((4, 2, 5, 1)):
        score = rng.integers(0, 4, size=(W * L, t, 3)).astype(np.float32)  # ties included
        ids = (100 * i + np.arange(W * L * t, dtype=np.int32)).reshape(W * L, t)
        ps = jax.jit(prb.add)(ps, {"score": score.reshape(W, L, t, 3), "id": ids.reshape(W, L, t)})
        s = jax.jit(plain.add)(s, {"score": score, "id": ids})
        for k in ("id", "score"):
            np.testing.assert_array_equal(np.asarray(ps.storage[k]).reshape(np.shape(s.storage[k])), s.storage[k])
        np.testing.assert_array_equal(np.asarray(ps.writer["rank"]).reshape(W * L, CAP), s.writer["rank"])
