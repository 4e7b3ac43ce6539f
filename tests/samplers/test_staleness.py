"""``StalenessAwareSampler``: probabilities ``w(current - stored)`` over the items within the
window (chi-square and an exact numpy reference computed from the stored versions), the
window never exceeded, ``set_policy_version`` (jittable, no recompilation, refuses negative
and decreasing versions), bad input, per-worker and checkpoints."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

import rlbuf
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.staleness import StalenessAwareSampler, set_policy_version, stats
from rlbuf.scaling.per_worker import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

KEY = ("collector", "policy_version")
CAP = 8  # time slots per lane
BIG = 4096


def batch(lanes, versions):
    """A batch ``[*lanes, T]`` whose step ``t`` of every lane has version ``versions[..., t]``."""
    v = np.broadcast_to(np.asarray(versions, np.int32), (*lanes, np.shape(versions)[-1]))
    return {"obs": jnp.asarray(v, jnp.float32) * 10, "collector": {"policy_version": jnp.asarray(v)}}


def reference(state, max_staleness=None, weight=None):
    """Exact numpy probabilities ``[n_lanes, capacity]`` from the stored versions."""
    v = np.asarray(state.storage["collector"]["policy_version"]).reshape(-1, state.layout.capacity)
    count = int(state.count)
    s = np.maximum(int(state.sampler.version) - v, 0).astype(np.float64)
    w = (1.0 / (s + 1.0)) if weight is None else np.asarray(weight(jnp.asarray(s, jnp.int32)), np.float64)
    if max_staleness is not None:
        w = np.where(s <= max_staleness, w, 0.0)
    w[:, count:] = 0.0
    return w / w.sum() if w.sum() > 0 else w


def implied(sampler, state):
    """The sampler's own distribution ``[n_lanes, capacity]``, read from its segment table."""
    ring = state.ring
    lo, length, _, mass = (np.asarray(x) for x in sampler._segments(ring, state.sampler))
    p = np.zeros((ring.n_lanes, ring.capacity))
    oldest = int(ring.oldest_stamp)
    for j in range(len(lo)):
        for lane in range(ring.n_lanes):
            for st_ in range(lo[j], lo[j] + length[j]):
                t = int(ring.physical(st_ - oldest))
                p[lane, t] += mass[j, lane] / max(length[j], 1)
    return p / p.sum() if p.sum() > 0 else p


_FNS: dict = {}


def fns(lanes, max_staleness=None, batch_size=BIG, max_segments=1024):
    key = (lanes, max_staleness, batch_size, max_segments)
    if key not in _FNS:
        n = int(np.prod(lanes)) if lanes else 1
        sampler = StalenessAwareSampler(max_staleness=max_staleness, max_segments=max_segments)
        rb = ReplayBuffer(storage=LazyTensorStorage(CAP * n, ndim=len(lanes) + 1), sampler=sampler,
                          batch_size=batch_size)
        _FNS[key] = (rb, jax.jit(rb.add), jax.jit(rb.sample), jax.jit(set_policy_version))
    return _FNS[key]


def filled(lanes, adds, current, **kw):
    """A buffer after ``adds`` (each a list of per-step versions, or ``[*lanes, T]``)."""
    rb, add, sample, setv = fns(lanes, **kw)
    state = rb.init(batch(lanes, [0]))
    for versions in adds:
        state = add(state, batch(lanes, versions))
    return rb, sample, setv(state, current)


def counts(info, lanes):
    idx = info["index"] if isinstance(info["index"], tuple) else (info["index"],)
    n = int(np.prod(lanes)) if lanes else 1
    lane = np.ravel_multi_index([np.asarray(i) for i in idx[:-1]], lanes) if lanes else 0
    flat = np.asarray(lane) * CAP + np.asarray(idx[-1])
    return np.bincount(flat, minlength=n * CAP)


@pytest.mark.parametrize("lanes", [(), (2,), (2, 2)], ids=["ndim1", "ndim2", "ndim3"])
def test_chi_square_of_staleness_weights(lanes):
    # wrapped ring, versions 0..5 in adds of 3 steps (plus a lane-dependent version for ndim > 1)
    adds = [[v] * 3 for v in range(6)]
    if lanes:
        adds.append(np.stack([np.full(2, 4 + i) for i in range(int(np.prod(lanes)))]).reshape(*lanes, 2))
    rb, sample, state = filled(lanes, adds, 7)
    p = reference(state)
    np.testing.assert_allclose(implied(rb.sampler, state), p, atol=1e-6)
    c = np.zeros(p.size)
    for k in range(4):
        state, out, info = sample(state, jax.random.key(k))
        c += counts(info, lanes)
        assert np.all(np.asarray(info["mask"]))
        stored = np.asarray(state.storage["collector"]["policy_version"][info["index"]])
        np.testing.assert_array_equal(np.asarray(info["staleness"]), 7 - stored)
        np.testing.assert_array_equal(np.asarray(out["obs"]), stored * 10.0)
    keep = p.reshape(-1) > 0
    assert c[~keep].sum() == 0
    assert sps.chisquare(c[keep], p.reshape(-1)[keep] * c.sum()).pvalue > 1e-4


def test_window_never_exceeded_and_masked_when_empty():
    rb, sample, state = filled((2,), [[v] * 2 for v in range(8)], 9, max_staleness=2)
    state, _, info = sample(state, jax.random.key(0))
    s = np.asarray(info["staleness"])
    assert s.max() <= 2 and set(np.unique(s)) == {2}  # versions 7 (s=2) only; 6 and older beyond
    np.testing.assert_allclose(implied(rb.sampler, state), reference(state, 2), atol=1e-6)
    state = set_policy_version(state, 12)  # everything is now too stale
    assert not bool(rb.can_sample(state))
    state, out, info = sample(state, jax.random.key(1))
    assert not np.any(np.asarray(info["mask"])) and not np.any(np.asarray(out["obs"]))
    empty = rb.init(batch((2,), [0]))
    assert not bool(rb.can_sample(empty))
    assert not np.any(np.asarray(sample(empty, jax.random.key(2))[2]["mask"]))


def test_set_policy_version_is_jittable_and_refuses_bad_versions():
    rb, add, sample, _ = fns((2,), max_staleness=3)
    setv = jax.jit(lambda s, v: set_policy_version(s, v))
    state = rb.init(batch((2,), [0]))
    before = sample._cache_size()
    for v in range(5):
        state = add(state, batch((2,), [v, v]))
        state = setv(state, jnp.asarray(v + 1))
        state, _, info = sample(state, jax.random.key(v))
        assert np.asarray(info["staleness"]).min() >= 1 and np.asarray(info["staleness"]).max() <= 3
    assert setv._cache_size() == 1 and sample._cache_size() <= before + 1
    assert int(state.sampler.version) == 5
    with pytest.raises(ValueError, match="lower than the current version 5"):
        set_policy_version(state, 4)
    with pytest.raises(ValueError, match="must be >= 0"):
        jax.jit(lambda s: set_policy_version(s, -1))(state)
    with pytest.raises(TypeError, match="no staleness-aware sampler state"):
        set_policy_version(rlbuf.ReplayBuffer(storage=LazyTensorStorage(4), batch_size=2).init({"x": jnp.zeros(1)}), 1)
    # traced: a lower version cannot raise, it is ignored (versions never decrease)
    assert int(setv(state, jnp.asarray(2)).sampler.version) == 5


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="max_staleness"):
        StalenessAwareSampler(max_staleness=-1)
    rb = ReplayBuffer(storage=LazyTensorStorage(8), sampler=StalenessAwareSampler(), batch_size=2)
    with pytest.raises(KeyError, match="version_key.*policy_version.*is not stored"):
        rb.init({"obs": jnp.zeros(1)})
    rb2 = dataclasses.replace(rb, sampler=StalenessAwareSampler(version_key="v"))
    with pytest.raises(TypeError, match="one integer per step"):
        rb2.init({"v": jnp.zeros(1, jnp.float32)})
    with pytest.raises(ValueError, match="time_order"):
        ReplayBuffer(storage=LazyTensorStorage(8), sampler=StalenessAwareSampler(version_key="v"),
                     writer=rlbuf.MaxValueWriter(rank_key="v"), batch_size=2).init({"v": jnp.zeros(1, jnp.int32)})


@settings(max_examples=25, deadline=None)
@given(adds=st.lists(st.tuples(st.integers(1, 11), st.integers(0, 2), st.booleans()), min_size=1, max_size=8),
       extra=st.integers(0, 3))
def test_segments_match_the_stored_versions(adds, extra):
    # add sizes 1..11 (some longer than the ring), version increments 0..2, sometimes a version
    # change inside an add; a small table (4 segments) so that old runs leave it
    lanes = (2,)
    rb, add, _, setv = fns(lanes, max_staleness=None, batch_size=8, max_segments=4)
    state = rb.init(batch(lanes, [0]))
    v = 0
    for t, inc, split in adds:
        v += inc
        steps = [v] * t
        if split and t > 1:
            steps[t // 2:] = [v + 1] * (t - t // 2)
            v += 1
        state = add(state, batch(lanes, steps))
    state = setv(state, v + extra)
    p, ref = implied(rb.sampler, state), reference(state)
    summary = stats(rb, state)
    if summary["unreachable"] == 0:
        np.testing.assert_allclose(p, ref, atol=1e-6)
    else:  # the oldest runs left the table: the rest keep their relative weights
        live = p > 0
        np.testing.assert_allclose(p[live] / p[live].sum(), ref[live] / ref[live].sum(), atol=1e-6)
        assert summary["unreachable"] == int(np.sum(ref > 0) - np.sum(live))


def test_per_worker_and_checkpoint_roundtrip(tmp_path):
    pw = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(2 * 2 * CAP, ndim=2), batch_size=512,
                                            sampler=StalenessAwareSampler(max_staleness=1)), 2)
    state = pw.init(batch((2,), [0]))
    state = pw.add_worker(state, 0, batch((2,), [0, 0, 0]))
    state = pw.add_worker(state, 1, batch((2,), [1, 1]))
    state = pw.add_worker(state, 0, batch((2,), [2, 2]))
    state = set_policy_version(state, 2)
    np.testing.assert_array_equal(np.asarray(state.sampler.version), [2, 2])
    state, _, info = jax.jit(pw.sample)(state, jax.random.key(0))
    w, s = np.asarray(info["index"][0]), np.asarray(info["staleness"])
    assert set(s[w == 0]) == {0} and set(s[w == 1]) == {1}
    rlbuf.checkpoint.save(tmp_path / "ck", state)
    back = rlbuf.checkpoint.restore(tmp_path / "ck", state)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_level_pick_is_exact_and_skips_zero_mass():
    from rlbuf.samplers.staleness import _pick

    rng = np.random.default_rng(0)
    mass = rng.uniform(0, 1, 3000) * (rng.uniform(size=3000) < 0.05)  # sparse: mostly zero mass
    mass[-1] = 0.0
    u = jnp.asarray(np.concatenate([rng.uniform(size=20000), [0.0, 1 - 2**-24]]), jnp.float32)
    pick, ok = jax.jit(_pick)(jnp.asarray(mass, jnp.float32), u)
    pick = np.asarray(pick)
    assert bool(ok) and np.all(mass[pick] > 0)
    keep = mass > 0
    c = np.bincount(pick, minlength=mass.size)[keep]
    assert sps.chisquare(c, mass[keep] / mass.sum() * c.sum()).pvalue > 1e-4
    pick0, ok0 = _pick(jnp.zeros(40), u[:4])
    assert not bool(ok0) and not np.any(np.asarray(pick0))


def test_sharded_state_takes_the_version():
    from jax.sharding import Mesh

    srb = rlbuf.shard(ReplayBuffer(storage=LazyTensorStorage(2 * CAP, ndim=2), batch_size=64,
                                   sampler=StalenessAwareSampler(max_staleness=1)), Mesh(np.array(jax.devices()[:1]),
                                                                                         ("data",)))
    state = srb.init(batch((2,), [0]))
    for v in range(4):
        state = srb.add(state, batch((2,), [v, v]))
    state = jax.jit(set_policy_version)(state, jnp.asarray(4))
    state, out, info = srb.sample(state, jax.random.key(0))
    assert set(np.unique(np.asarray(info["staleness"]))) == {1}  # version 3 only (4 - 3); 2 is beyond
    np.testing.assert_array_equal(np.asarray(out["collector"]["policy_version"]), 3)
