"""PrioritizedSliceSampler against a plain-numpy model: valid starts from the stored done
flags (trajectory ends, write head, ring), per-step priorities (last wins), chi-square of the
start distribution, exact weights, padding with strict_length=False, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.storages import LazyTensorStorage

ALPHA, BETA, EPS = 0.8, 0.5, 1e-3
CAP, L = 12, 3


class Model:
    """Per lane the full history of done flags; stored = the last ``count`` steps; history step
    ``i`` lives in slot ``i % CAP``. Priorities per flat slot (tree values)."""

    def __init__(self, n_lanes, strict=True):
        self.nl, self.strict = n_lanes, strict
        self.done = [[] for _ in range(n_lanes)]
        self.prio = np.zeros(n_lanes * CAP)
        self.max_p = None

    @property
    def count(self):
        return min(len(self.done[0]), CAP)

    def add(self, done):  # done: [n_lanes, T]
        d = 1.0 if self.max_p is None else self.max_p
        for lane in range(self.nl):
            for f in done[lane]:
                i = len(self.done[lane])
                self.done[lane].append(bool(f))
                self.prio[lane * CAP + i % CAP] = (d + EPS) ** ALPHA

    def valid(self, n=L):
        v = np.zeros(self.nl * CAP, bool)
        for lane in range(self.nl):
            hist = self.done[lane]
            lo = len(hist) - self.count
            for i in range(lo, len(hist)):
                # steps from i to the end of its trajectory (inside the stored window)
                j = i
                while j < len(hist) - 1 and not hist[j]:
                    j += 1
                after = j - i + 1
                first = i == lo or hist[i - 1]
                ok = after >= n or (not self.strict and first)
                v[lane * CAP + i % CAP] = ok
        return v

    def update(self, flat, prio):
        for f, p in zip(flat, prio):
            if f % CAP >= self.count:
                continue
            if np.isfinite(p) and p >= 0:
                self.max_p = p if self.max_p is None else max(self.max_p, p)
            else:
                p = 0.0
            self.prio[f] = (p + EPS) ** ALPHA


@functools.lru_cache(maxsize=None)
def setup(ndim, strict=True, mode="slice_len"):
    lanes = (2,) if ndim == 2 else ()
    kw = dict(slice_len=L) if mode == "slice_len" else dict(num_slices=4)
    sampler = PrioritizedSliceSampler(64, ALPHA, BETA, EPS, end_key=("next", "done"), strict_length=strict, **kw)
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP * (2 if lanes else 1), ndim=ndim), sampler=sampler,
                      batch_size=4 * L)
    example = {"x": jnp.zeros((*lanes, 1), jnp.int32), "next": {"done": jnp.zeros((*lanes, 1), bool),
                                                               "truncated": jnp.zeros((*lanes, 1), bool)}}
    f = dict(add=jax.jit(rb.add), sample=jax.jit(rb.sample), update=jax.jit(rb.update_priority),
             can=jax.jit(rb.can_sample),
             many=jax.jit(lambda s, k: jax.vmap(lambda kk: rb.sample(s, kk)[2]["index"])(jax.random.split(k, 400))))
    return rb, lanes, example, f


def batch(lanes, done, start):
    done = np.asarray(done, bool).reshape(*lanes, -1)
    t = done.shape[-1]
    x = (start + np.arange(int(np.prod(lanes, dtype=int)) * t)).reshape(*lanes, t)
    return {"x": jnp.asarray(x, jnp.int32), "next": {"done": jnp.asarray(done), "truncated": jnp.zeros_like(done)}}


def flat_of(index, lanes):
    if not isinstance(index, tuple):
        return np.asarray(index)
    return np.asarray(index[-1]) + (np.asarray(index[0]) * CAP if lanes else 0)


def tree_leaves(s):
    return np.asarray(s.sampler.tree.sums[-1][: s.layout.size], np.float64)


@settings(max_examples=16, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([1, 2]),
    strict=st.booleans(),
    ops=st.lists(st.tuples(st.sampled_from(["add5", "add5", "update"]), st.integers(0, 2**31 - 1)),
                 min_size=1, max_size=6),
)
def test_against_reference(ndim, strict, ops):
    rb, lanes, example, f = setup(ndim, strict)
    nl = 2 if lanes else 1
    ref = Model(nl, strict)
    s = rb.init(example)
    x0 = 0
    for op, seed in ops:
        rng = np.random.default_rng(seed)
        if op.startswith("add"):
            t = int(op[3:])
            done = rng.random((nl, t)) < 0.3
            s = f["add"](s, batch(lanes, done, x0))
            x0 += nl * t
            ref.add(done)
        elif bool(f["can"](s)):
            s, _, info = f["sample"](s, jax.random.key(seed))
            prio = rng.choice([0.0, 0.5, 2.0, 4.0, np.nan, -1.0], size=(4, L)).astype(np.float32)
            s = f["update"](s, info["index"], jnp.asarray(prio))
            ref.update(flat_of(info["index"], lanes).ravel(), prio.ravel())
        np.testing.assert_allclose(np.asarray(s.sampler.prio), ref.prio, rtol=1e-5)
        want = np.where(ref.valid(), ref.prio, 0)
        np.testing.assert_allclose(tree_leaves(s), want, rtol=1e-5)
        assert bool(f["can"](s)) == (want.sum() > 0)
        if want.sum() > 0:
            s, out, info = f["sample"](s, jax.random.key(seed + 1))
            flat = flat_of(info["index"], lanes)
            assert (want[flat[:, 0]] > 0).all()
            mask = np.asarray(info["mask"])
            # Each slice: consecutive slots of one lane, no episode end before its last step.
            t = np.asarray(info["index"] if not lanes else info["index"][-1])
            steps = (t - t[:, :1]) % CAP
            assert (steps[mask] == np.broadcast_to(np.arange(L), mask.shape)[mask]).all()
            done = np.asarray(out["next"]["done"])
            assert not (done[:, :-1] & mask[:, 1:]).any()
            if strict:
                assert mask.all()


@pytest.mark.parametrize("ndim", [1, 2])
def test_chi_square_and_weights(ndim):
    rb, lanes, example, f = setup(ndim)
    nl = 2 if lanes else 1
    ref = Model(nl)
    rng = np.random.default_rng(1)
    s = rb.init(example)
    for k in range(3):
        done = rng.random((nl, 5)) < 0.2
        s = f["add"](s, batch(lanes, done, 100 * k))
        ref.add(done)
    for k in range(3):
        s, _, info = f["sample"](s, jax.random.key(k))
        prio = rng.uniform(0, 3, (4, L)).astype(np.float32)
        s = f["update"](s, info["index"], jnp.asarray(prio))
        ref.update(flat_of(info["index"], lanes).ravel(), prio.ravel())
    want = np.where(ref.valid(), ref.prio, 0)
    idx = f["many"](s, jax.random.key(7))
    starts = flat_of(idx, lanes)[..., 0].ravel()
    counts = np.bincount(starts, minlength=want.size)
    assert counts[want == 0].sum() == 0
    nz = want > 0
    assert stats.chisquare(counts[nz], want[nz] / want[nz].sum() * counts.sum()).pvalue > 1e-3
    s, _, info = f["sample"](s, jax.random.key(9))
    st_ = flat_of(info["index"], lanes)[:, 0]
    w = (want[st_] / want[nz].min()) ** -BETA
    np.testing.assert_allclose(np.asarray(info["weight"]), np.broadcast_to(w[:, None], (4, L)), rtol=1e-5)
    assert f["sample"]._cache_size() == 1


def test_padding_when_not_strict():
    rb, lanes, example, f = setup(1, strict=False)
    s = f["add"](rb.init(example), batch((), [0, 1, 1, 0, 0, 0, 1], 0))
    # Trajectories [0,1], [2], [3..6]: valid starts 0, 2 (short, first step), 3, 4.
    np.testing.assert_array_equal(tree_leaves(s)[:7] > 0, [1, 0, 1, 1, 1, 0, 0])
    idx = np.asarray(f["many"](s, jax.random.key(0)))
    s, out, info = f["sample"](s, jax.random.key(3))
    for row, m, x in zip(np.asarray(info["index"]), np.asarray(info["mask"]), np.asarray(out["x"])):
        if row[0] == 0:
            assert m.tolist() == [True, True, False]
        if row[0] == 2:
            assert m.tolist() == [True, False, False]
        assert (x[~m] == 0).all()
        assert np.asarray(info["weight"])[~np.asarray(info["mask"])].sum() == 0
    assert set(np.unique(idx[..., 0])) == {0, 2, 3, 4}


def test_num_slices_mode_and_scan_compiles_once():
    rb, lanes, example, f = setup(2, mode="num_slices")
    s = rb.init(example)
    s = f["add"](s, batch(lanes, np.zeros((2, 6)), 0))
    assert int(s.sampler.thr) == 0

    def body(s, k):
        s, _, info = rb.sample(s, k)
        return rb.update_priority(s, info["index"], info["weight"] + 1.0), info["index"][-1][:, 0]

    run = jax.jit(lambda s, k: jax.lax.scan(body, s, jax.random.split(k, 10)))
    s2, starts = run(s, jax.random.key(0))
    s2, starts = run(s2, jax.random.key(1))
    assert run._cache_size() == 1 and int(s2.sampler.thr) == L
    assert (np.asarray(starts) <= 6 - L).all()
    ref = Model(2)
    ref.add(np.zeros((2, 6), bool))
    assert ((tree_leaves(s2) > 0) == ref.valid()).all()


def test_errors():
    with pytest.raises(ValueError, match="give exactly one of num_slices or slice_len"):
        PrioritizedSliceSampler(10, 0.5, 0.5, end_key="done")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        PrioritizedSliceSampler(10, -1.0, 0.5, slice_len=2, end_key="done")
    sampler = PrioritizedSliceSampler(10, 0.5, 0.5, slice_len=2, end_key=("next", "done"))
    rb = ReplayBuffer(storage=LazyTensorStorage(12), sampler=sampler, batch_size=4)
    with pytest.raises(ValueError, match="max_capacity=10 is smaller than the storage"):
        rb.init({"next": {"done": jnp.zeros((1,), bool)}})
    rb, lanes, example, f = setup(1)
    s = rb.init(example)
    with pytest.raises(ValueError, match=r"priority has shape \(4,\), expected \(4, 3\)"):
        rb.update_priority(s, jnp.zeros((4, 3), jnp.int32), jnp.ones(4))


def test_traj_key_mode():
    sampler = PrioritizedSliceSampler(16, 1.0, 1.0, 0.0, slice_len=2, traj_key=("collector", "traj_ids"))
    rb = ReplayBuffer(storage=LazyTensorStorage(16), sampler=sampler, batch_size=8)
    ids = jnp.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3], jnp.int32)
    data = {"collector": {"traj_ids": ids}, "x": jnp.arange(10)}
    s = jax.jit(rb.add)(rb.init(data), data)
    valid = np.asarray(s.sampler.tree.sums[-1][:10]) > 0
    # Trajectory 1 is too short; the last step of each trajectory cannot start a slice.
    np.testing.assert_array_equal(valid, [1, 1, 0, 0, 1, 0, 1, 1, 1, 0])
    s = jax.jit(rb.update_priority)(s, jnp.array([[4, 5], [6, 7]]), jnp.array([[0.0, 0.0], [1.0, 9.0]]))
    _, out, info = jax.jit(rb.sample)(s, jax.random.key(0))
    starts = np.asarray(info["index"])[:, 0]
    assert set(starts.tolist()) <= {0, 1, 6, 7} and 7 in starts
    ids_out = np.asarray(out["collector"]["traj_ids"])
    assert (ids_out[:, 0] == ids_out[:, 1]).all()


@pytest.mark.parametrize("config", [dict(slice_len=3), dict(num_slices=4)])
def test_burn_in_update_priority_never_overwrites_burn_in_steps(config):
    """Issue 26: with burn_in, update_priority with the full [S, b + L] info["index"] (the
    documented call) or with info itself updates only the learning steps; the priorities a
    masked loss gives burn-in steps (0) never reach other slices' learning steps."""
    b, n = 2, 3
    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=12,
                      sampler=PrioritizedSliceSampler(64, ALPHA, BETA, EPS, burn_in=b, traj_key="traj", **config))
    data = {"obs": jnp.arange(40, dtype=jnp.float32), "traj": jnp.repeat(jnp.arange(2, dtype=jnp.int32), 20)}
    state = jax.jit(rb.add)(rb.init(data), data)  # (jitted: eager op-by-op dispatch is slower here)
    before = np.asarray(state.sampler.prio)
    state, batch, info = jax.jit(rb.sample)(state, jax.random.key(3))
    idx, learn, mask = np.asarray(info["index"]), np.asarray(info["learning_mask"]), np.asarray(info["mask"])
    assert idx.shape == (4, b + n) and (mask & ~learn).any()
    learning = set(idx[learn].tolist())
    burn_only = set(idx[mask & ~learn].tolist()) - learning
    assert burn_only  # steps that are only burn-in context in this batch
    priority = jnp.where(info["learning_mask"], 5.0, 0.0)  # a masked loss: 0 on burn-in steps
    update = jax.jit(rb.update_priority)
    for how in ("full index", "learning index", "info"):
        if how == "full index":
            new = update(state, info["index"], priority)
        elif how == "learning index":
            new = update(state, info["index"][:, b:], priority[:, b:])
        else:
            new = update(state, info, priority)
        prio = np.asarray(new.sampler.prio)
        np.testing.assert_allclose(prio[sorted(burn_only)], before[sorted(burn_only)], err_msg=how)
        np.testing.assert_allclose(prio[sorted(learning)], (5.0 + EPS) ** ALPHA, rtol=1e-6, err_msg=how)
        untouched = np.setdiff1d(np.arange(40), sorted(learning))
        np.testing.assert_allclose(prio[untouched], before[untouched], err_msg=how)
