"""``LazyTensorStorage(compact_next=True)`` (``rlbuf.storages.compact``): differential tests against an
uncompressed buffer fed the same batches (every sampler, ndim 1/2/3, wrap-arounds, episodes
crossing adds, ``reset_at_each_iter`` adds), the write-head and table-overflow cases, the
checkpoint round trip, per-worker buffers and the memory figure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf import _ring, checkpoint
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers import RandomSampler, SamplerWithoutReplacement
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.scaling.sharding import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage, compact
from rlbuf.writers import MaxValueWriter

LANES = {1: (), 2: (2,), 3: (2, 1)}
END = ("next", "done")
SAMPLERS = {
    "random": lambda size: RandomSampler(),
    "without": lambda size: SamplerWithoutReplacement(),
    "slice": lambda size: SliceSampler(slice_len=2, end_key=END, strict_length=False),
    "slice_without": lambda size: SliceSamplerWithoutReplacement(slice_len=2, end_key=END, strict_length=False),
    "prioritized": lambda size: PrioritizedSampler(max_capacity=size, alpha=0.7, beta=0.5),
    "prioritized_slice": lambda size: PrioritizedSliceSampler(
        max_capacity=size, alpha=0.7, beta=0.5, slice_len=2, end_key=END, strict_length=False),
}


class Episodes:
    """Numpy ground truth: ``observation = [lane, episode, step]`` (int32) and a ``[2, 2]``
    uint8 ``pixels`` frame of the same step; the true next observation of every step (the
    final one at done steps, distinct from the reset observation that follows)."""

    def __init__(self, lanes, lengths, seed):
        self.lanes, self.n = lanes, _ring.n_lanes(lanes)
        self.rng = np.random.default_rng(seed)
        self.lengths = lengths
        self.ep = np.arange(self.n) * 10_000
        self.step = np.zeros(self.n, np.int64)
        self.len = self.rng.choice(lengths, self.n)

    def _obs(self, ep, step):
        lane = np.arange(self.n)
        o = np.stack([lane, ep, step], -1).astype(np.int32)
        px = ((ep * 7 + step * 3)[:, None, None] + np.arange(4).reshape(2, 2)) % 256
        return o, px.astype(np.uint8)

    def batch(self, t, reset=False, with_done=True):
        if reset:  # reset_at_each_iter: every lane starts a new episode, the last one is cut
            self.ep, self.step = self.ep + 1, np.zeros(self.n, np.int64)
            self.len = self.rng.choice(self.lengths, self.n)
        cols = {k: [] for k in ("o", "px", "no", "npx", "done")}
        for _ in range(t):
            o, px = self._obs(self.ep, self.step)
            no, npx = self._obs(self.ep, self.step + 1)
            done = self.step + 1 >= self.len
            for k, v in zip(cols, (o, px, no, npx, done)):
                cols[k].append(v)
            self.ep = np.where(done, self.ep + 1, self.ep)
            self.step = np.where(done, 0, self.step + 1)
            self.len = np.where(done, self.rng.choice(self.lengths, self.n), self.len)
        s = {k: np.stack(v, 1).reshape(*self.lanes, t, *v[0].shape[1:]) for k, v in cols.items()}
        out = {"observation": s["o"], "pixels": s["px"], "reward": s["o"][..., 2].astype(np.float32),
               "next": {"observation": s["no"], "pixels": s["npx"]}}
        if with_done:
            out["next"]["done"] = s["done"]
        return jax.tree_util.tree_map(jnp.asarray, out)


_CACHE: dict = {}


def _gather_valid(rb, s, idx):
    return rb.storage.gather(s.layout, s.storage, idx), rb.storage.valid(s.layout, s.storage, idx)


GATHER = jax.jit(_gather_valid, static_argnums=0)


def pair(ndim, cap, sampler, with_done, final_obs_size="ring"):
    """(plain rb, compact rb, jitted add, jitted sample) for one configuration; ``"ring"``: a
    final-observation table as large as the ring (never overflows)."""
    key = (ndim, cap, sampler, with_done, final_obs_size)
    if key not in _CACHE:
        size = cap * _ring.n_lanes(LANES[ndim])
        if final_obs_size == "ring":
            final_obs_size = size
        mk = lambda **kw: ReplayBuffer(  # noqa: E731
            storage=LazyTensorStorage(size, ndim=ndim, **kw), sampler=SAMPLERS[sampler](size), batch_size=4)
        plain = mk()
        comp = mk(compact_next=True, final_obs_size=final_obs_size)
        _CACHE[key] = (plain, comp, jax.jit(lambda rb, s, d: rb.add(s, d), static_argnums=0),
                       jax.jit(lambda rb, s, k: rb.sample(s, k), static_argnums=0))
    return _CACHE[key]


def all_items(state):
    """Index ``(*lane_idx, t)`` of every slot of the ring (``[n_lanes * capacity]`` each, the
    same shape whatever ``count`` is, so ``GATHER`` compiles once per configuration) and
    whether that slot was written (``t < count``)."""
    lay = state.layout
    grids = np.meshgrid(*[np.arange(d) for d in lay.lanes], np.arange(lay.capacity), indexing="ij")
    written = grids[-1].reshape(-1) < int(state.count)
    return tuple(jnp.asarray(g.reshape(-1), jnp.int32) for g in grids), written


def assert_tree_equal(a, b, mask=None):
    for (ka, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
        x, y = np.asarray(x), np.asarray(y)
        if mask is not None:
            m = np.asarray(mask)
            x, y = x[m], y[m]
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(ka))


def run_pair(ndim, cap, sampler, t_lens, lengths, resets, with_done, final_obs_size="ring", seed=0, draws=2):
    plain, comp, add, sample = pair(ndim, cap, sampler, with_done, final_obs_size)
    sim = Episodes(LANES[ndim], lengths, seed)
    first = sim.batch(1, with_done=with_done)
    sp, sc = plain.init(first), comp.init(first)
    for i, (t, reset) in enumerate(zip(t_lens, resets)):
        data = sim.batch(t, reset=reset, with_done=with_done)
        sp, sc = add(plain, sp, data), add(comp, sc, data)
        # Every stored item, rebuilt, equals the stored one (where the storage can rebuild it).
        idx, written = all_items(sp)
        got, ok = GATHER(comp, sc, idx)
        ok = np.asarray(ok) & written
        assert_tree_equal(got, GATHER(plain, sp, idx)[0], ok)
        if final_obs_size == "ring":
            assert bool(np.all(ok[written])), "an item lost its next observation with the default table"
        for j in range(draws):
            key = jax.random.key(seed * 1000 + i * 10 + j)
            sp, bp, ip = sample(plain, sp, key)
            sc, bc, ic = sample(comp, sc, key)
            mc, mp = np.asarray(ic["mask"]), np.asarray(ip["mask"])
            if final_obs_size == "ring":
                assert_tree_equal(ic["index"], ip["index"])
                np.testing.assert_array_equal(mc, mp)
                assert_tree_equal(bc, bp, mc)
            else:  # draws holding a lost item were redrawn: compare at the compact buffer's index
                ix = ic["index"] if isinstance(ic["index"], tuple) else (ic["index"],)
                ref, _ = GATHER(plain, sp, ix)
                got, ok = GATHER(comp, sc, ix)
                assert bool(np.all(np.asarray(ok)[mc])), "a lost item was sampled"
                assert_tree_equal(bc, ref, mc)
            assert_tree_equal(bc, jax.tree_util.tree_map(jnp.zeros_like, bc), ~mc)  # masked: zeros
    return sp, sc


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler(sampler):
    """Each sampler once: lanes, wrap-arounds, episodes crossing adds, a reset add."""
    run_pair(2, 5, sampler, (3, 11, 3), (1, 2, 4), (False, False, True), True, seed=1, draws=1)


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    ndim=st.sampled_from((1, 2, 3)),
    cap=st.sampled_from((3, 8)),
    sampler=st.sampled_from(sorted(SAMPLERS)),
    t_lens=st.lists(st.sampled_from((1, 3, 11)), min_size=1, max_size=4),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    resets=st.lists(st.booleans(), min_size=5, max_size=5),
    with_done=st.booleans(),
    seed=st.integers(0, 100),
)
def test_differential(ndim, cap, sampler, t_lens, lengths, resets, with_done, seed):
    with_done = with_done or "slice" in sampler  # slice samplers need the end key
    # A table as big as the ring: every item exact; the overflow test covers small tables.
    run_pair(ndim, cap, sampler, t_lens, lengths, resets, with_done, seed=seed)


@pytest.mark.parametrize("ndim", (1, 2, 3))
def test_table_overflow_never_wrong(ndim):
    """Episodes of 1-2 steps with a 1-row table per lane: most done steps lose their final
    observation; those items are masked (zeros), counted in ``lost``, never returned wrong."""
    n = _ring.n_lanes(LANES[ndim])
    sp, sc = run_pair(ndim, 8, "random", (5, 3, 11, 1), (1, 2), (False,) * 4, True, final_obs_size=n, draws=3)
    assert int(sc.storage.lost) > 0
    ok = np.asarray(sc.storage.entry)  # some slots are breaks without a row of their own
    assert ok.shape == (*LANES[ndim], 8)


def lost_reference(stamps_done, cut_stamps, stored, newest, rows):
    """Numpy model of the items that lost their final observation, per lane: a break (done
    step or cut) that is not the newest step and has ``rows`` or more later breaks (table rows
    go to breaks in time order, a ring of ``rows`` per lane)."""
    out = []
    for lane_breaks, st_lane in zip(stamps_done, stored):
        b = np.array(sorted(set(lane_breaks) | set(cut_stamps)), np.int64)
        later = len(b) - np.searchsorted(b, st_lane, side="right")
        out.append(np.isin(st_lane, b) & (st_lane != newest) & (later >= rows))
    return np.concatenate(out)


REDRAWN = ("random", "prioritized", "slice", "prioritized_slice")


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(
    ndim=st.sampled_from((1, 2, 3)),
    sampler=st.sampled_from(REDRAWN),
    t_lens=st.lists(st.sampled_from((1, 3, 11)), min_size=2, max_size=4),
    lengths=st.lists(st.integers(2, 4), min_size=1, max_size=2),
    resets=st.lists(st.booleans(), min_size=4, max_size=4),
    rows=st.integers(1, 2),
    seed=st.integers(0, 100),
)
def test_lost_items_never_sampled(ndim, sampler, t_lens, lengths, resets, rows, seed):
    """A small final-observation table overflows: the items that lost their row (numpy model:
    breaks with ``rows`` later breaks in their lane) are exactly the ones ``valid`` rejects,
    and no sampler that can redraw ever returns one: every draw is real (``info["mask"]``)
    and equals the uncompressed buffer at the same index."""
    cap, lanes = 8, LANES[ndim]
    n = _ring.n_lanes(lanes)
    plain, comp, add, sample = pair(ndim, cap, sampler, True, final_obs_size=rows * n)
    sim = Episodes(lanes, lengths, seed)
    sp, sc = plain.init(sim.batch(1)), comp.init(sim.batch(1))
    added, breaks, cuts = 0, [[] for _ in range(n)], []
    for i, (t, reset) in enumerate(zip(t_lens, resets)):
        data = sim.batch(t, reset=reset)
        if reset and added and min(t, cap) < cap:
            cuts.append(added - 1)  # the previous batch's last step is cut
        done = np.asarray(data["next"]["done"]).reshape(n, t)
        for lane in range(n):
            breaks[lane] += [added + j for j in range(t) if done[lane, j]]
        added += t
        sp, sc = add(plain, sp, data), add(comp, sc, data)
        idx, written = all_items(sp)
        _, ok = GATHER(comp, sc, idx)
        count = int(sp.count)
        stamps = np.asarray(sp.ring.stamp(idx[-1])).reshape(n, cap)[:, :count]
        lost = lost_reference(breaks, cuts, stamps, added - 1, rows)
        np.testing.assert_array_equal(np.asarray(ok)[written], ~lost)
        for j in range(2):
            sc, bc, ic = sample(comp, sc, jax.random.key(seed * 100 + i * 10 + j))
            ix = ic["index"] if isinstance(ic["index"], tuple) else (ic["index"],)
            mc = np.asarray(ic["mask"])
            ref = plain.sampler.postprocess(sp.ring, GATHER(plain, sp, ix)[0], ic)  # slice ends marked
            got_ok = np.asarray(GATHER(comp, sc, ix)[1])
            assert np.all(got_ok[mc]), "a lost item was sampled"
            assert_tree_equal(bc, ref, mc)
            if lost.mean() <= 0.5:  # a row stays bad after 17 draws with probability <= 2^-17
                assert np.all(mc.reshape(mc.shape[0], -1).any(axis=1)), "a draw was left masked"


def test_lost_items_uniform():
    """Chi-square: ``RandomSampler`` draws uniformly over the items the storage can return,
    never the others (a table of 1 row per lane, episodes of 1-2 steps)."""
    from scipy import stats

    rb = ReplayBuffer(storage=LazyTensorStorage(16, ndim=2, compact_next=True, final_obs_size=2),
                      batch_size=4096)
    sim = Episodes((2,), (1, 2), 3)
    s = rb.init(sim.batch(1))
    for t in (5, 6, 4):
        s = rb.add(s, sim.batch(t))
    idx, written = all_items(s)
    ok = np.asarray(rb.storage.valid(s.layout, s.storage, idx)) & written
    assert 0 < ok.sum() < written.sum()
    s, _, info = jax.jit(rb.sample)(s, jax.random.key(0))
    flat = np.asarray(s.ring.flat(info["index"]))
    counts = np.bincount(flat, minlength=16)[np.asarray(s.ring.flat(idx))]
    assert counts[~ok].sum() == 0 and bool(np.all(info["mask"]))
    assert stats.chisquare(counts[ok]).pvalue > 1e-3


def test_prioritized_exclude_zeroes_priority():
    """``PrioritizedSampler.exclude``: the rejected items' priorities become 0 (out of the
    tree's mass and of ``p_min``), the others stay."""
    rb = ReplayBuffer(storage=LazyTensorStorage(8), batch_size=2,
                      sampler=PrioritizedSampler(max_capacity=8, alpha=1.0, beta=1.0))
    s = rb.add(rb.init({"x": jnp.zeros((1,))}), {"x": jnp.arange(8.0)})
    s = rb.update_priority(s, jnp.arange(8), jnp.arange(1.0, 9.0))
    tree = rb.sampler._tree(s.layout)
    idx = (jnp.array([1, 3, 3, 5]),)
    out = rb.sampler.exclude(s.ring, s.sampler, idx, jnp.array([True, True, False, False]))
    leaves = np.asarray(tree.leaves(out.tree))[:8]
    expect = np.asarray(tree.leaves(s.sampler.tree))[:8].copy()
    expect[[1, 3]] = 0
    np.testing.assert_allclose(leaves, expect)
    np.testing.assert_allclose(float(tree.total(out.tree)), expect.sum(), rtol=1e-6)


def test_write_head_and_reset_at_each_iter():
    """The newest step's next observation comes with it (head row); an add that starts new
    episodes makes the previous newest step a break with its true next observation."""
    _, comp, add, _ = pair(2, 8, "random", False, None)
    sim = Episodes((2,), (100,), 0)
    sc = comp.init(sim.batch(1, with_done=False))
    first = sim.batch(3, with_done=False)
    sc = add(comp, sc, first)
    head = (jnp.arange(2, dtype=jnp.int32), jnp.full((2,), 2, jnp.int32))
    got = comp.storage.gather(sc.layout, sc.storage, head)
    np.testing.assert_array_equal(got["next"]["observation"], first["next"]["observation"][:, 2])
    sc = add(comp, sc, sim.batch(3, reset=True, with_done=False))  # does not continue it
    got = comp.storage.gather(sc.layout, sc.storage, head)
    np.testing.assert_array_equal(got["next"]["observation"], first["next"]["observation"][:, 2])
    assert np.all(np.asarray(sc.storage.entry)[:, 2] >= 0)  # now a break with a table row
    assert bool(np.all(comp.storage.valid(sc.layout, sc.storage, head)))


def test_ring_end_and_no_recompile():
    """Continuing episodes across the ring's physical end; one executable per batch shape."""
    plain, comp, add, sample = pair(2, 8, "random", True)
    run_pair(2, 8, "random", (3, 3, 3, 3, 3, 3), (50,), (False,) * 6, True)
    before = add._cache_size()
    run_pair(2, 8, "random", (3, 3), (50,), (False,) * 2, True, seed=1)
    assert add._cache_size() == before


def test_checkpoint_round_trip(tmp_path):
    plain, comp, add, sample = pair(2, 8, "slice", True)
    _, sc = run_pair(2, 8, "slice", (5, 11), (2, 4), (False, True), True)
    checkpoint.save(tmp_path / "ck", sc)
    back = checkpoint.restore(tmp_path / "ck", jax.eval_shape(lambda: sc))
    assert_tree_equal(back, sc)
    key = jax.random.key(3)
    _, b1, _ = sample(comp, sc, key)
    _, b2, _ = sample(comp, back, key)
    assert_tree_equal(b1, b2)


def test_per_worker_matches_plain():
    sim = Episodes((2, 2), (1, 3), 0)
    kws = ({}, dict(compact_next=True, final_obs_size=32))
    bufs = [PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(32, ndim=2, **kw),
                            sampler=SliceSampler(slice_len=2, end_key=END, strict_length=False), batch_size=8),
               num_workers=2) for kw in kws]
    first = sim.batch(1)
    states = [b.init(jax.tree_util.tree_map(lambda x: x[0], first)) for b in bufs]
    for t, reset in ((5, False), (3, True), (11, False)):
        data = sim.batch(t, reset=reset)
        states = [jax.jit(b.add)(s, data) for b, s in zip(bufs, states)]
        outs = [jax.jit(b.sample)(s, jax.random.key(t)) for b, s in zip(bufs, states)]
        states = [o[0] for o in outs]
        (_, bp, ip), (_, bc, ic) = outs
        np.testing.assert_array_equal(ic["mask"], ip["mask"])
        assert_tree_equal(bc, bp)


@pytest.mark.parametrize("sampler", ("random", "prioritized"))
def test_per_worker_lost_items_redrawn(sampler):
    """Per-worker buffers (the redraw loop under vmap): with a 1-row table per lane most done
    steps lose their final observation, yet every draw is real and equals the plain buffer's
    stored item (a lost item would come back masked)."""
    sim = Episodes((2, 2), (1, 2), 4)
    mk = lambda **kw: PerWorkerReplayBuffer(ReplayBuffer(  # noqa: E731
        storage=LazyTensorStorage(32, ndim=2, **kw), sampler=SAMPLERS[sampler](32), batch_size=16), num_workers=2)
    plain, comp = mk(), mk(compact_next=True, final_obs_size=2)
    first = jax.tree_util.tree_map(lambda x: x[0], sim.batch(1))
    sp, sc = plain.init(first), comp.init(first)
    for t in (5, 3, 11, 4):
        data = sim.batch(t)
        sp, sc = jax.jit(plain.add)(sp, data), jax.jit(comp.add)(sc, data)
        sc, bc, ic = jax.jit(comp.sample)(sc, jax.random.key(t))
        assert bool(np.all(ic["mask"]))
        ix = tuple(np.asarray(i) for i in ic["index"])
        store = jax.tree_util.tree_map(np.asarray, sp.storage)
        assert_tree_equal(bc, jax.tree_util.tree_map(lambda x: x[ix], store))
    assert int(np.sum(sc.storage.lost)) > 0


def test_memory_84x84_uint8():
    """``[84, 84]`` uint8 frames: the state's bytes are <= 1.1x one frame per transition plus the
    final-observation table (computed with eval_shape, nothing allocated)."""
    frame = (84, 84)
    for size, lanes in ((4096, (8,)), (1_000_000, (16,))):
        ex = {"observation": jax.ShapeDtypeStruct((*lanes, 1, *frame), jnp.uint8),
              "action": jax.ShapeDtypeStruct((*lanes, 1), jnp.int32),
              "reward": jax.ShapeDtypeStruct((*lanes, 1), jnp.float32),
              "next": {"observation": jax.ShapeDtypeStruct((*lanes, 1, *frame), jnp.uint8),
                       "done": jax.ShapeDtypeStruct((*lanes, 1), jnp.bool_)}}
        rb = ReplayBuffer(storage=LazyTensorStorage(size, ndim=2, compact_next=True), batch_size=32)
        abstract = jax.eval_shape(rb.init, ex)
        total = compact.nbytes(abstract.storage)
        rows = compact.table_rows(rb.storage, abstract.layout)
        table = _ring.n_lanes(lanes) * (rows + 1) * 84 * 84
        assert total <= 1.1 * size * 84 * 84 + table, (size, total / (size * 84 * 84))


def test_errors():
    sim = Episodes((2,), (3,), 0)
    data = sim.batch(2)
    with pytest.raises(ValueError, match="time_order"):
        ReplayBuffer(storage=LazyTensorStorage(16, ndim=2, compact_next=True),
                     writer=MaxValueWriter(rank_key="reward"), batch_size=4).init(data)
    with pytest.raises(ValueError, match="no \\('next', k\\)"):
        ReplayBuffer(storage=LazyTensorStorage(16, ndim=2, compact_next=True), batch_size=4).init(
            {"observation": data["observation"], "reward": data["reward"]})
    with pytest.raises(ValueError, match="final_obs_size"):
        LazyTensorStorage(16, compact_next=True, final_obs_size=0)


def test_sharded_with_frame_stack_matches_plain():
    """``rlbuf.shard`` over this process's devices: compact_next + FrameStack equals the plain
    sharded buffer with the same FrameStack (slices, wrap-around; no reset adds: the plain
    buffer cannot see a cut that no done/truncated flag marks)."""
    from rlbuf import FrameStack, shard

    mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    G = len(jax.devices())
    sim = Episodes((2 * G,), (1, 3), 0)
    mk = lambda **kw: shard(ReplayBuffer(  # noqa: E731
        storage=LazyTensorStorage(16 * G, ndim=2, **kw), batch_size=4 * G,
        sampler=SliceSampler(slice_len=2, end_key=END, strict_length=False),
        frame_stack=FrameStack(2, keys=("pixels",))), mesh)
    a, b = mk(), mk(compact_next=True, final_obs_size=16 * G)
    first = sim.batch(1)
    sa, sb = a.init(first), b.init(first)
    for t in (5, 3, 11):
        d = sim.batch(t)
        sa, sb = jax.jit(a.add)(sa, d), jax.jit(b.add)(sb, d)
        (sa, ba, ia), (sb, bb, ib) = jax.jit(a.sample)(sa, jax.random.key(t)), jax.jit(b.sample)(sb, jax.random.key(t))
        np.testing.assert_array_equal(ia["mask"], ib["mask"])
        assert_tree_equal(bb, ba)


def _f32(bits):
    return np.asarray(bits, np.uint32).view(np.float32)


def test_signed_zeros_and_nan_payloads_round_trip_bit_exactly():
    """Issue 26 item 5: breaks are found by comparing bits. A next observation of ``-0.0`` before
    an observation of ``+0.0`` (and NaNs of different payloads) is a break: the stored bits come
    back, inside one ``add`` and across two ``add`` calls through the head row (ndim=2, no done
    flags: only the data says where the breaks are)."""
    POS, NEG, NAN_A, NAN_B = 0x00000000, 0x80000000, 0x7FC00000, 0x7FC00001
    # lane 0: one add, next obs bits at step 0 differ from obs bits at step 1 only in the sign/payload
    obs = np.array([[POS, POS, NAN_A, 7], [POS, NAN_A, POS, NAN_A]], np.uint32)
    nxt = np.array([[NEG, NAN_B, 0x3F800000, NEG], [NAN_A, POS, NAN_A, NAN_B]], np.uint32)
    nxt[0, 1] = NAN_B  # obs[0, 2] is NAN_A: payloads differ
    # second add: its first observations are +0.0 / NAN_A, the head row holds NEG / NAN_B
    obs2 = np.array([[POS, 1], [NAN_A, 2]], np.uint32)
    nxt2 = np.array([[0x3F800000, 3], [0x40000000, 4]], np.uint32)
    adds = [(obs, nxt), (obs2, nxt2)]
    rb = ReplayBuffer(storage=LazyTensorStorage(2 * 8, ndim=2, compact_next=True, final_obs_size=2 * 8), batch_size=4)
    mk = lambda o, n: {"observation": jnp.asarray(_f32(o)), "next": {"observation": jnp.asarray(_f32(n))}}  # noqa: E731
    state = rb.init(mk(obs, nxt))
    add = jax.jit(rb.add)
    for o, n in adds:
        state = add(state, mk(o, n))
    lane, t = np.meshgrid(np.arange(2), np.arange(6), indexing="ij")
    got = rb.storage.gather(state.layout, state.storage, (jnp.asarray(lane, jnp.int32), jnp.asarray(t, jnp.int32)))
    want_next = np.concatenate([nxt, nxt2], axis=1)
    np.testing.assert_array_equal(np.asarray(got["next"]["observation"]).view(np.uint32), want_next)
    np.testing.assert_array_equal(np.asarray(got["observation"]).view(np.uint32), np.concatenate([obs, obs2], 1))
    assert bool(jnp.all(rb.storage.valid(state.layout, state.storage, (jnp.asarray(lane), jnp.asarray(t)))))
