"""``SliceSampler`` against a plain-numpy ground truth.

The data come from :class:`GroundTruth`: per lane, episodes of chosen lengths whose
observation encodes ``(episode id, step)``; ids are unique, ``("next","done")`` is True at
each episode's end, ``("next","truncated")`` is present. The reference for what the ring
holds is ``reference.NumpyRingBuffer``; the reference trajectories are the runs of one
episode id among each lane's stored steps (an episode partly overwritten counts with its
stored part).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import NumpyRingBuffer
from scipy import stats

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers import _trajectories as trj
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

LANES = {1: (), 2: (3,), 3: (2, 2)}
CAPS = {1: 12, 2: 10, 3: 9}  # time slots per lane, one per ndim (few compiled shapes)
ADD_T = (3, 7, 13)  # 13 > every capacity: the writer drops the first steps of the add
N = 3  # slice_len
NUM_SLICES = 8
KEYS = {"traj": dict(traj_key="ep"), "end": dict(end_key=("next", "done"))}


def n_lanes(lanes):
    return int(np.prod(lanes, dtype=np.int64)) if lanes else 1


class GroundTruth:
    """Per lane, a stream of episodes: episode ``i`` of lane ``l`` has length
    ``lengths[(i + l) % len(lengths)]``; ids are unique over lanes (starting at 1, so real
    observations never equal the zero padding)."""

    def __init__(self, lanes, lengths):
        self.lanes = tuple(lanes)
        self.lengths = list(lengths)
        self.n = n_lanes(lanes)
        self.next_id = 1
        self.k = list(range(self.n))  # index into lengths of each lane's current episode
        self.cur = [self._new(lane) for lane in range(self.n)]  # [id, step, length]

    def _new(self, lane):
        ep = [self.next_id, 0, self.lengths[self.k[lane] % len(self.lengths)]]
        self.next_id += 1
        self.k[lane] += 1
        return ep

    def batch(self, t_len):
        ep = np.zeros((self.n, t_len), np.int32)
        step = np.zeros((self.n, t_len), np.int32)
        done = np.zeros((self.n, t_len), bool)
        trunc = np.zeros((self.n, t_len), bool)
        for lane in range(self.n):
            for t in range(t_len):
                e = self.cur[lane]
                ep[lane, t], step[lane, t] = e[0], e[1]
                e[1] += 1
                if e[1] == e[2]:
                    done[lane, t] = True
                    trunc[lane, t] = e[2] % 2 == 0  # some episodes end truncated
                    self.cur[lane] = self._new(lane)
        shp = (*self.lanes, t_len)
        return {
            "obs": np.stack([ep, step], -1).reshape(*shp, 2),
            "ep": ep.reshape(shp),
            "next": {"done": done.reshape(shp), "truncated": trunc.reshape(shp)},
        }


def ref_runs(ref: NumpyRingBuffer):
    """``{(lane, ep): (first stored step, stored length)}`` for every stored trajectory."""
    if ref.count == 0:
        return {}
    st_ = ref.stored()
    n = n_lanes(ref.lanes)
    ep = st_["ep"].reshape(n, ref.count)
    step = st_["obs"][..., 1].reshape(n, ref.count)
    runs = {}
    for lane in range(n):
        for p in range(ref.count):
            if p == 0 or ep[lane, p] != ep[lane, p - 1]:
                runs[(lane, int(ep[lane, p]))] = [int(step[lane, p]), 0]
            runs[(lane, int(ep[lane, p]))][1] += 1
    return {k: tuple(v) for k, v in runs.items()}


def lane_of(index, lanes):
    if not lanes:
        return np.zeros(np.shape(index[-1]), np.int64)
    return np.ravel_multi_index(tuple(np.asarray(i) for i in index[:-1]), lanes)


def check_batch(ref, batch, info, n, strict, *, require_full=True):
    """Every property a slice batch must have, against the numpy reference. Returns the list of
    ``(lane, ep, first_step, n_real)`` of the slices."""
    lanes = ref.lanes
    runs = ref_runs(ref)
    eligible = [k for k, (_, ln) in runs.items() if ln >= (n if strict else 1)]
    mask = np.asarray(info["mask"])
    index = info["index"] if lanes else (info["index"],)
    t = np.asarray(index[-1])
    lane = lane_of(index, lanes)
    obs = np.asarray(batch["obs"])
    trunc = np.asarray(batch["next"]["truncated"])
    done = np.asarray(batch["next"]["done"])
    n_l = n_lanes(lanes)
    ring_obs = ref.storage()["obs"].reshape(n_l, ref.capacity, 2) if ref.count else None
    ring_done = ref.storage()["next"]["done"].reshape(n_l, ref.capacity) if ref.count else None
    out = []
    for i in range(mask.shape[0]):
        real = mask[i]
        k = int(real.sum())
        assert np.all(real[:k]) and not np.any(real[k:]), f"mask is not a prefix: {real}"
        # Padding is zeros, and never flagged.
        assert np.all(obs[i, k:] == 0) and not np.any(trunc[i, k:]) and not np.any(done[i, k:])
        if k == 0:
            assert not eligible or not require_full, "an all-padding slice although a trajectory is eligible"
            continue
        # info["index"] locates every real step.
        np.testing.assert_array_equal(obs[i, :k], ring_obs[lane[i, :k], t[i, :k]])
        ep, steps = obs[i, :k, 0], obs[i, :k, 1]
        assert np.all(ep == ep[0]), f"slice crosses episodes: {ep}"
        # flashbax's check: strictly increasing, here by exactly one (consecutive steps).
        assert np.all(np.diff(steps) == 1), f"steps not consecutive: {steps}"
        assert np.all(lane[i] == lane[i, 0])
        key = (int(lane[i, 0]), int(ep[0]))
        assert key in runs, f"slice {key} is not stored (overwritten data returned)"
        first, length = runs[key]
        assert first <= steps[0] and steps[-1] < first + length, "slice leaves the stored trajectory"
        if strict:
            assert k == n and length >= n
        else:
            assert k == min(n, length)
            if length < n:
                assert steps[0] == first
        last = np.zeros(n, bool)
        last[k - 1] = True
        np.testing.assert_array_equal(trunc[i], last)
        np.testing.assert_array_equal(done[i], last | (ring_done[lane[i], t[i]] & real))
        out.append((key[0], key[1], int(steps[0]), k))
    return out, eligible


# --- cached jitted functions (compile once per configuration) ---------------------------------

_FNS: dict = {}


def fns(ndim, mode):
    """``(rb_strict, rb_loose, add, sample_strict, sample_loose)``; both buffers share one state
    layout (``strict_length`` only changes ``sample``), so one jitted ``add`` serves both."""
    key = (ndim, mode)
    if key not in _FNS:
        storage = LazyTensorStorage(CAPS[ndim] * n_lanes(LANES[ndim]), ndim=ndim)
        strict = ReplayBuffer(
            storage=storage, sampler=SliceSampler(slice_len=N, **KEYS[mode]), batch_size=N * NUM_SLICES
        )
        loose = ReplayBuffer(
            storage=storage,
            sampler=SliceSampler(num_slices=NUM_SLICES, strict_length=False, **KEYS[mode]),
            batch_size=N * NUM_SLICES,
        )

        def sampler(rb):
            return jax.jit(lambda s, k: (rb.sample(s, k), rb.can_sample(s)))

        _FNS[key] = (strict, loose, jax.jit(strict.add), sampler(strict), sampler(loose))
    return _FNS[key]


def example(ndim):
    return jax.tree_util.tree_map(jnp.asarray, GroundTruth(LANES[ndim], [2]).batch(2))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    ndim=st.sampled_from([1, 2, 3]),
    mode=st.sampled_from(sorted(KEYS)),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    adds=st.lists(st.sampled_from(ADD_T), min_size=1, max_size=7),
    seed=st.integers(0, 2**16),
)
def test_slices_stay_in_one_stored_trajectory(ndim, mode, lengths, adds, seed):
    strict_rb, _, add, sample_strict, sample_loose = fns(ndim, mode)
    gt = GroundTruth(LANES[ndim], lengths)
    ref = NumpyRingBuffer(CAPS[ndim], LANES[ndim])
    state = strict_rb.init(example(ndim))
    key = jax.random.key(seed)
    for t_len in adds:
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
        key, k1, k2 = jax.random.split(key, 3)
        (state, batch, info), can = sample_strict(state, k1)
        _, eligible = check_batch(ref, batch, info, N, True)
        assert bool(can) == bool(eligible)
        (_, batch, info), can = sample_loose(state, k2)
        _, eligible = check_batch(ref, batch, info, N, False)
        assert bool(can) == bool(eligible)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    adds=st.lists(st.sampled_from(ADD_T), min_size=2, max_size=6),
)
def test_queue_rebuilt_for_a_new_slice_len_then_kept_incrementally(lengths, adds):
    """A sampler whose slice_len differs from the queue's (here 2 vs 3) samples without the queue
    (O(capacity) path) until the next add rebuilds the queue for it; later adds keep it."""
    strict_rb, _, add, _, _ = fns(2, "traj")
    rb2 = _rb2()
    gt = GroundTruth(LANES[2], lengths)
    ref = NumpyRingBuffer(CAPS[2], LANES[2])
    state = strict_rb.init(example(2))
    for i, t_len in enumerate(adds):
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
        assert int(state.sampler.thr) == (3 if i == 0 else 2)
        (state, batch, info), can = _SAMPLE2(rb2)(state, jax.random.key(i))
        assert int(state.sampler.want) == 2
        if i > 0:  # rebuilt for slice_len 2 by this add
            check_queue(rb2, state, ref, 2)
        _, eligible = check_batch(ref, batch, info, 2, True)
        assert bool(can) == bool(eligible)


_CACHE2: dict = {}


def _rb2():
    if "rb" not in _CACHE2:
        _CACHE2["rb"] = ReplayBuffer(
            storage=LazyTensorStorage(CAPS[2] * 3, ndim=2),
            sampler=SliceSampler(num_slices=4, traj_key="ep"),
            batch_size=8,
        )
    return _CACHE2["rb"]


def _SAMPLE2(rb):
    if "fn" not in _CACHE2:
        _CACHE2["fn"] = jax.jit(lambda s, k: (rb.sample(s, k), rb.can_sample(s)))
    return _CACHE2["fn"]


# --- the queue itself ---------------------------------------------------------------------------

_QUEUE_FNS: dict = {}


def check_queue(rb, state, ref, n):
    """The queue's eligible entries (``head .. head + count - 1`` per lane) are exactly the stored
    trajectories with at least ``n`` stored steps, in time order, each entry's ``[begin, end)``
    their stored part (first step and length), against the numpy reference."""
    key = (id(rb), n)
    if key not in _QUEUE_FNS:

        def f(state):
            s, lay, ring = state.sampler, state.layout, state.ring
            ranges = trj.lane_ranges(ring, s.traj)
            head, counts = rb.sampler._eligible(ring, s, ranges, n)
            k = (head[:, None] + jnp.arange(lay.capacity)) % lay.capacity
            begin, end = rb.sampler._entry_bounds(s.queue[jnp.arange(lay.n_lanes)[:, None], k], ranges)
            return counts, ring.slot(begin), end - begin, ranges.n_stored, s.qlen

        _QUEUE_FNS[key] = (rb, jax.jit(f))
    counts, slot, length, n_stored, qlen = (np.asarray(x) for x in _QUEUE_FNS[key][1](state))
    n_l = n_lanes(ref.lanes)
    ring_obs = ref.storage()["obs"].reshape(n_l, ref.capacity, 2) if ref.count else None
    runs = ref_runs(ref)  # in lane, then time order
    for lane in range(n_l):
        # The counts each add keeps: stored trajectories, and the queue entries of stored ones:
        # those that reached n steps (steps so far: the first stored step's number plus the
        # stored length) as kept by adds, possibly only those with n stored after a rebuild.
        mine = [(first, ln) for (lz, _), (first, ln) in runs.items() if lz == lane]
        assert int(n_stored[lane]) == len(mine), (lane, n_stored, mine)
        lo, hi = sum(ln >= n for _, ln in mine), sum(first + ln >= n for first, ln in mine)
        assert lo <= int(qlen[lane]) <= hi, (lane, qlen, mine)
        want = [(ep, first, ln) for (lz, ep), (first, ln) in runs.items() if lz == lane and ln >= n]
        assert int(counts[lane]) == len(want), (lane, counts, want)
        for j, (ep, first, ln) in enumerate(want):
            assert int(length[lane, j]) == ln, (lane, j, length[lane], want)
            np.testing.assert_array_equal(ring_obs[lane, slot[lane, j]], [ep, first])


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    mode=st.sampled_from(sorted(KEYS)),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    adds=st.lists(st.sampled_from(ADD_T + (1,)), min_size=1, max_size=10),
)
def test_queue_entries_are_the_eligible_stored_trajectories(mode, lengths, adds):
    """Kept incrementally over adds of 1 step, several steps (trajectories ending and reaching
    slice_len inside one add) and more steps than the ring holds."""
    strict_rb, _, add, _, _ = fns(2, mode)
    gt = GroundTruth(LANES[2], lengths)
    ref = NumpyRingBuffer(CAPS[2], LANES[2])
    state = strict_rb.init(example(2))
    for t_len in adds:
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
        check_queue(strict_rb, state, ref, N)


# --- distribution -------------------------------------------------------------------------------


def _fixed_buffer(sampler, num_slices):
    """Lanes (2,), 12 slots per lane, 20 steps per lane added (the first 8 overwritten)."""
    lane_lengths = {0: [6, 5, 2, 4, 3], 1: [1, 7, 4, 8]}
    ep, step = np.zeros((2, 20), np.int32), np.zeros((2, 20), np.int32)
    nid = 1
    for lane, lens in lane_lengths.items():
        t = 0
        for ln in lens:
            ep[lane, t : t + ln], step[lane, t : t + ln] = nid, np.arange(ln)
            nid += 1
            t += ln
    data = {"obs": np.stack([ep, step], -1), "ep": ep}
    rb = ReplayBuffer(storage=LazyTensorStorage(24, ndim=2), sampler=sampler, batch_size=num_slices * 3)
    state = rb.init(jax.tree_util.tree_map(jnp.asarray, data))
    for a in range(0, 20, 5):
        state = rb.add(state, jax.tree_util.tree_map(lambda x: jnp.asarray(x[:, a : a + 5]), data))
    ref = NumpyRingBuffer(12, (2,))
    ref.add(data)
    return rb, state, ref


@pytest.mark.parametrize(
    "strict, given", [(True, "num_slices"), (True, "slice_len"), (False, "num_slices")]
)
def test_default_distribution_is_torchrl(strict, given):
    """Trajectory uniform among the eligible stored ones, then start uniform within it. With
    ``num_slices`` given the first sample takes the queue-less path; with ``slice_len`` the
    queue is kept from the first add."""
    num_slices = 6000
    size = dict(num_slices=num_slices) if given == "num_slices" else dict(slice_len=3)
    rb, state, ref = _fixed_buffer(SliceSampler(traj_key="ep", strict_length=strict, **size), num_slices)
    assert int(state.sampler.thr) == (3 if given == "slice_len" else 0)
    _, batch, info = jax.jit(rb.sample)(state, jax.random.key(3))
    obs = np.asarray(batch["obs"])
    lane = np.asarray(info["index"][0][:, 0])
    runs = ref_runs(ref)
    eligible = {k: v for k, v in runs.items() if v[1] >= (3 if strict else 1)}
    cells, probs = [], []
    for (ln, ep), (first, length) in sorted(eligible.items()):
        starts = range(first, first + max(length - 2, 1))
        for s in starts:
            cells.append((ln, ep, s))
            probs.append(1 / len(eligible) / len(starts))
    got = {c: 0 for c in cells}
    for i in range(num_slices):
        c = (int(lane[i]), int(obs[i, 0, 0]), int(obs[i, 0, 1]))
        assert c in got, f"slice start {c} outside the distribution's support"
        got[c] += 1
    f_obs = np.array([got[c] for c in cells])
    assert len(cells) == (12 if strict else 13)
    res = stats.chisquare(f_obs, np.array(probs) * num_slices)
    assert res.pvalue > 1e-3, (res, dict(zip(cells, f_obs)))


# --- empty / too small, compile once, errors ---------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_empty_and_too_small_buffers(ndim):
    strict_rb, _, add, sample_strict, sample_loose = fns(ndim, "traj")
    state = strict_rb.init(example(ndim))
    for sample in (sample_strict, sample_loose):
        (_, batch, info), can = sample(state, jax.random.key(0))
        assert not bool(can) and not np.any(np.asarray(info["mask"]))
        assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(batch))
    # Only trajectories shorter than slice_len: strict cannot sample, non-strict can.
    gt = GroundTruth(LANES[ndim], [1, 2])
    ref = NumpyRingBuffer(CAPS[ndim], LANES[ndim])
    for _ in range(3):
        data = gt.batch(7)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
    (_, batch, info), can = sample_strict(state, jax.random.key(1))
    assert not bool(can) and not np.any(np.asarray(info["mask"]))
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(batch))
    (_, batch, info), can = sample_loose(state, jax.random.key(2))
    assert bool(can)
    out, _ = check_batch(ref, batch, info, N, False)
    assert len(out) == NUM_SLICES and all(k <= 2 for *_, k in out)


def test_hundred_add_sample_iterations_compile_once():
    strict_rb, _, _, _, _ = fns(2, "end")
    gt = GroundTruth(LANES[2], [3, 5, 2, 8])

    @jax.jit
    def step(state, data, key):
        state = strict_rb.add(state, data)
        return strict_rb.sample(state, key)

    state = strict_rb.init(example(2))
    ref = NumpyRingBuffer(CAPS[2], LANES[2])
    for i in range(100):
        data = gt.batch(3)
        ref.add(data)
        state, batch, info = step(state, jax.tree_util.tree_map(jnp.asarray, data), jax.random.key(i))
    assert step._cache_size() == 1
    check_batch(ref, batch, info, N, True)


def test_scan_loop_matches_step_by_step():
    """Add+sample inside ``lax.scan`` gives the same batches as the same steps one by one."""
    strict_rb, _, add, sample_strict, _ = fns(1, "traj")
    gt = GroundTruth((), [4, 1, 6])
    data = [gt.batch(7) for _ in range(6)]
    stacked = jax.tree_util.tree_map(lambda *x: jnp.asarray(np.stack(x)), *data)
    keys = jax.random.split(jax.random.key(5), 6)

    def body(state, xs):
        d, k = xs
        state, batch, _ = strict_rb.sample(strict_rb.add(state, d), k)
        return state, batch["obs"]

    state0 = strict_rb.init(example(1))
    _, scanned = jax.jit(lambda s: jax.lax.scan(body, s, (stacked, keys)))(state0)
    state = state0
    for i, d in enumerate(data):
        state = add(state, jax.tree_util.tree_map(jnp.asarray, d))
        (state, batch, _), _ = sample_strict(state, keys[i])
        np.testing.assert_array_equal(np.asarray(scanned[i]), np.asarray(batch["obs"]))


def _small_example():
    return {"ep": jnp.zeros((4, 5), jnp.int32), "next": {"done": jnp.zeros((4, 5), bool)}}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_slices=2, slice_len=3, traj_key="ep"), "exactly one of num_slices or slice_len"),
        (dict(traj_key="ep"), "exactly one of num_slices or slice_len"),
        (dict(num_slices=0, traj_key="ep"), "num_slices must be a positive int"),
        (dict(num_slices=2, end_key="d", end_keys=["a", "b"]), "end_key and end_keys are exclusive"),
        (dict(num_slices=2, end_keys=[]), "end_keys must name at least one key"),
        (dict(num_slices=2, traj_key="ep", trajectory_key="other"), "disagree"),
    ],
)
def test_bad_settings_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SliceSampler(**kwargs)


@pytest.mark.parametrize(
    "sampler, batch_size, match",
    [
        (SliceSampler(num_slices=3, traj_key="ep"), 8, "batch_size=8 is not divisible by num_slices=3"),
        (SliceSampler(slice_len=3, traj_key="ep"), 8, "batch_size=8 is not divisible by slice_len=3"),
        (SliceSampler(slice_len=6, traj_key="ep"), 12, "slice_len=6 is larger than the 5 time steps"),
        (SliceSampler(num_slices=1, traj_key="ep"), 6, "slice_len=6 is larger"),
        (SliceSampler(num_slices=2, traj_key=("collector", "traj_ids")), 8, r"traj_key \('collector', 'traj_ids'\)"),
        (SliceSampler(num_slices=2, end_key=("next", "terminated")), 8, r"end_key \('next', 'terminated'\) is not"),
        (SliceSampler(num_slices=2, end_keys=["x", "y"]), 8, "none of the end_keys 'x', 'y' is stored"),
        (SliceSampler(num_slices=2, traj_key="x", end_key="y"), 8, "end_key 'y' is not stored"),
    ],
)
def test_impossible_settings_raise_at_init(sampler, batch_size, match):
    rb = ReplayBuffer(storage=LazyTensorStorage(20, ndim=2), sampler=sampler, batch_size=batch_size)
    with pytest.raises(ValueError, match=match):
        rb.init(_small_example())


def test_trajectory_key_alias_and_key_normalisation():
    a = SliceSampler(num_slices=2, trajectory_key=["collector", "traj_ids"])
    b = SliceSampler(num_slices=2, traj_key=("collector", "traj_ids"))
    assert a == b and hash(a) == hash(b) and a.traj_key == ("collector", "traj_ids")


# --- the reusable bookkeeping helpers -----------------------------------------------------------


@settings(max_examples=30, deadline=None, derandomize=True)
@given(width=st.sampled_from([1, 2, 32, 33, 34, 1000, 1088, 1089]),
       data=st.data())
def test_count_prefix_is_the_length_of_the_true_prefix(width, data):
    """The probing search of ``count_prefix`` against a direct count (widths around its step
    boundaries: 32 probes, 33 ** 2 = 1089), for prefixes and bounds on either side of ``width``."""
    n = np.array(data.draw(st.lists(st.integers(0, width + 2), min_size=3, max_size=3)))
    c = np.array(data.draw(st.lists(st.integers(0, width + 2), min_size=3, max_size=3)))
    got = _count_prefix_fn(width)(jnp.asarray(c, jnp.int32), jnp.asarray(n, jnp.int32))
    np.testing.assert_array_equal(np.asarray(got), np.minimum(np.minimum(c, n), width))


@functools.lru_cache(maxsize=None)
def _count_prefix_fn(width):
    return jax.jit(lambda c, n: trj.count_prefix(lambda j: j < c[:, None], n, width))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), adds=st.lists(st.sampled_from(ADD_T), max_size=5))
def test_valid_start_mask_matches_reference(lengths, adds):
    strict_rb, _, add, _, _ = fns(3, "end")
    gt = GroundTruth(LANES[3], lengths)
    ref = NumpyRingBuffer(CAPS[3], LANES[3])
    state = strict_rb.init(example(3))
    for t_len in adds:
        data = gt.batch(t_len)
        ref.add(data)
        state = add(state, jax.tree_util.tree_map(jnp.asarray, data))
    got = np.asarray(_mask_fn(state.layout)(state, N))
    want = np.zeros((4, CAPS[3]), bool)
    if ref.count:
        ring = ref.storage()["obs"].reshape(4, CAPS[3], 2)
        runs = ref_runs(ref)
        for lane in range(4):
            for t in range(ref.count):
                ep, s = ring[lane, t]
                first, length = runs[(lane, int(ep))]
                want[lane, t] = first + length - s >= N
    np.testing.assert_array_equal(got.reshape(4, CAPS[3]), want)


_MASK: dict = {}


def _mask_fn(layout):
    if layout not in _MASK:
        _MASK[layout] = jax.jit(
            lambda s, n: trj.valid_start_mask(s.ring, s.sampler.traj, n), static_argnums=1
        )
    return _MASK[layout]


def test_one_trajectory_longer_than_the_ring_slice_len_equal_to_capacity():
    """A trajectory longer than the ring is its stored part; a full-ring slice starts at the oldest
    stored step, never across the write head (where the newest and oldest steps meet)."""
    rb = ReplayBuffer(storage=LazyTensorStorage(5), sampler=SliceSampler(num_slices=2, traj_key="ep"), batch_size=10)
    gt = GroundTruth((), [100])
    state = rb.init(example(1))
    add, sample = jax.jit(rb.add), jax.jit(rb.sample)
    for i, t_len in enumerate([3, 7, 2, 4]):
        state = add(state, jax.tree_util.tree_map(jnp.asarray, gt.batch(t_len)))
        _, batch, info = sample(state, jax.random.key(i))
        added = sum([3, 7, 2, 4][: i + 1])
        if added < 5:
            assert not np.asarray(info["mask"]).any()
        else:
            want = np.tile(np.arange(added - 5, added), (2, 1))
            np.testing.assert_array_equal(np.asarray(batch["obs"])[:, :, 1], want)


def _windowed_run(rb, xs, windowed: bool):
    """States and samples after each add of ``xs`` (``[n_adds, lanes, T]`` leaves), with the
    record/queue rings read and written through ``rlbuf._xla.lane_windows`` (forced on for this
    small ring) or in the generic forms (whole-ring scatters and gathers)."""
    from rlbuf import _xla

    def body(s, x):
        s = rb.add(s, x)
        _, batch, info = rb.sample(s, jax.random.key(0))
        return s, (s, batch, info["index"], info["mask"])

    fn = jax.jit(lambda s, xs: jax.lax.scan(body, s, xs))  # a new function: traced under the switch below
    first = jax.tree_util.tree_map(lambda x: x[0], xs)
    with _xla.generic_forms(not windowed):
        old = _xla.LANE_WINDOWS_MIN_BYTES
        _xla.LANE_WINDOWS_MIN_BYTES = 0
        try:
            assert _xla.lane_windows(rb.init(first).sampler.queue, [(jnp.zeros(4, jnp.int32), 7)]).windowed == (
                windowed and jax.default_backend() == "cpu")
            return fn(rb.init(first), xs)
        finally:
            _xla.LANE_WINDOWS_MIN_BYTES = old


@pytest.mark.parametrize("t_len, strict", [(3, True), (1, True), (3, False)])
def test_windowed_bookkeeping_matches_the_whole_ring_forms(t_len, strict):
    """Through many adds (the records and queue rings wrap several times, episodes of 1-4 steps),
    the per-lane windows leave the same state and draw the same slices as whole-ring ops."""
    rng = np.random.default_rng(t_len)
    n_adds, lanes = 600 // t_len, 4
    ids = np.cumsum(rng.random((lanes, n_adds * t_len)) < 0.45, axis=1) * lanes + np.arange(lanes)[:, None]
    data = {"obs": rng.standard_normal((lanes, n_adds * t_len)).astype(np.float32), "ep": ids.astype(np.int32)}
    xs = jax.tree_util.tree_map(lambda x: jnp.asarray(np.moveaxis(x.reshape(lanes, n_adds, t_len), 1, 0)), data)
    rb = ReplayBuffer(storage=LazyTensorStorage(lanes * 64, ndim=2),
                      sampler=SliceSampler(slice_len=2, traj_key="ep", strict_length=strict), batch_size=8)
    a, b = _windowed_run(rb, xs, True), _windowed_run(rb, xs, False)
    assert int(a[0].sampler.traj.n_traj.min()) > 3 * 64  # the records ring wrapped
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Adds of at least trj.MATERIALIZE_MIN_STEPS steps take the long-add forms on CPU (trajectory
# counts and offsets computed once into buffers by rlbuf._xla.materialize); 130 > the capacity
# (the writer drops the first steps). Five adds wrap the ring several times.
LONG_T = (70, 130, 70, 130, 70)
LONG_CAP = 96


def _long_run(rb, datas, generic: bool):
    """States and strict / loose samples after each add of ``datas``, CPU or generic forms."""
    from rlbuf import _xla

    strict, loose = rb
    with _xla.generic_forms(generic):  # new functions, traced under the switch
        add = jax.jit(lambda s, x: strict.add(s, x))
        draw = jax.jit(lambda s, k: (strict.sample(s, k), loose.sample(s, k)))
        state = strict.init(datas[0])
        out = []
        for i, d in enumerate(datas):
            state = add(state, d)
            out.append((state, draw(state, jax.random.key(i))))
        return out


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_long_adds_match_the_reference_and_the_generic_forms(ndim):
    assert min(LONG_T) >= trj.MATERIALIZE_MIN_STEPS
    lanes = LANES[ndim]
    gt = GroundTruth(lanes, [1, 5, 12, 40, 3, 90, 7, 150])
    datas = [jax.tree_util.tree_map(jnp.asarray, gt.batch(t)) for t in LONG_T]
    storage = LazyTensorStorage(LONG_CAP * n_lanes(lanes), ndim=ndim)
    rbs = tuple(ReplayBuffer(storage=storage, batch_size=N * NUM_SLICES,
                             sampler=SliceSampler(slice_len=N, strict_length=s, end_key=("next", "done")))
                for s in (True, False))
    cpu, generic = _long_run(rbs, datas, False), _long_run(rbs, datas, True)
    ref = NumpyRingBuffer(LONG_CAP, lanes)
    for d, (state, ((_, b_s, i_s), (_, b_l, i_l))) in zip(datas, cpu):
        ref.add(jax.tree_util.tree_map(np.asarray, d))
        check_batch(ref, b_s, i_s, N, True)
        check_batch(ref, b_l, i_l, N, False)
    for x, y in zip(jax.tree_util.tree_leaves(cpu), jax.tree_util.tree_leaves(generic)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_long_adds_vmapped_per_worker_match_the_generic_forms():
    """PerWorkerReplayBuffer (the add vmapped over workers): the long-add forms stay loops under
    vmap and leave the same state and slices as the generic forms."""
    from rlbuf import _xla
    from rlbuf.scaling.per_worker import PerWorkerReplayBuffer

    workers, lanes = 2, LANES[2]
    rb = ReplayBuffer(storage=LazyTensorStorage(workers * LONG_CAP * n_lanes(lanes), ndim=2),
                      sampler=SliceSampler(slice_len=N, traj_key="ep"), batch_size=N * NUM_SLICES)
    pw = PerWorkerReplayBuffer(rb, workers)
    gts = [GroundTruth(lanes, [2, 9, 70, 1, 30][w:] + [4]) for w in range(workers)]

    def stacked(t):
        return jax.tree_util.tree_map(lambda *x: jnp.asarray(np.stack(x)), *[g.batch(t) for g in gts])

    datas = [stacked(t) for t in LONG_T[:4]]
    outs = []
    for generic in (False, True):
        with _xla.generic_forms(generic):
            add, draw = jax.jit(lambda s, x: pw.add(s, x)), jax.jit(lambda s, k: pw.sample(s, k))
            state = pw.init(jax.tree_util.tree_map(lambda x: x[0], datas[0]))
            out = []
            for i, d in enumerate(datas):
                state = add(state, d)
                out.append((state, draw(state, jax.random.key(i))))
            outs.append(out)
    assert int(outs[0][-1][0].sampler.traj.n_traj.min()) > 3
    for x, y in zip(jax.tree_util.tree_leaves(outs[0]), jax.tree_util.tree_leaves(outs[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
