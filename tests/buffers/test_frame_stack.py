"""``ReplayBuffer(frame_stack=FrameStack(...))``: every sampled item's stacks equal a numpy
reference built from ground-truth episode ids (frames of the same episode, still stored, the
first one repeated), with and without ``compact_next``, flat and sliced samples, ndim 1/2/3."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compact import END, LANES, Episodes, assert_tree_equal

from rlbuf import _ring
from rlbuf.buffers.frame_stack import FrameStack
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers import RandomSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

K = 3
KEYS = ("observation", "pixels")
SAMPLERS = {
    "random": lambda: RandomSampler(),
    "slice": lambda: SliceSampler(slice_len=2, end_key=END, strict_length=False),
}
_CACHE: dict = {}


def buffers(ndim, cap, sampler, compact, axis):
    key = (ndim, cap, sampler, compact, axis)
    if key not in _CACHE:
        size = cap * _ring.n_lanes(LANES[ndim])
        kw = dict(compact_next=True, final_obs_size=size) if compact else {}
        plain = ReplayBuffer(storage=LazyTensorStorage(size, ndim=ndim), sampler=SAMPLERS[sampler](), batch_size=4)
        fs = ReplayBuffer(storage=LazyTensorStorage(size, ndim=ndim, **kw), sampler=SAMPLERS[sampler](),
                          batch_size=4, frame_stack=FrameStack(K, keys=KEYS, axis=axis))
        _CACHE[key] = (plain, fs, jax.jit(lambda rb, s, d: rb.add(s, d), static_argnums=0),
                       jax.jit(lambda rb, s, k: rb.sample(s, k), static_argnums=0))
    return _CACHE[key]


def reference(state, batch, index, mask, axis):
    """Stacks of ``batch`` (from an unstacked buffer) by walking the stored slots back while the
    ground-truth episode id (``observation[1]``) stays the same."""
    store = jax.tree_util.tree_map(np.asarray, state.storage)
    cap, count, cursor = state.layout.capacity, int(state.count), int(state.cursor)
    oldest = cursor if count >= cap else 0
    idx = [np.asarray(i) for i in index]
    out = jax.tree_util.tree_map(np.asarray, batch)
    shape = idx[-1].shape
    for k in KEYS:
        frames = np.asarray(store[k])
        stacks, nstacks = [], []
        for pos in np.ndindex(*shape):
            lane = tuple(i[pos] for i in idx[:-1])
            t = int(idx[-1][pos])
            rank = (t - oldest) % cap
            ep = store["observation"][lane + (t,)][1]
            src = [t]
            for j in range(1, K):
                s = (t - j) % cap
                same = j <= rank and store["observation"][lane + (s,)][1] == ep and src[-1] == (t - j + 1) % cap
                src.append(s if same else src[-1])
            fr = [frames[lane + (s,)] for s in src[::-1]]
            if not mask[pos]:
                fr = [np.zeros_like(f) for f in fr]
            stacks.append(np.stack(fr, axis=axis))
            nxt = out["next"][k][pos]
            nstacks.append(np.stack(fr[1:] + [nxt], axis=axis))
        out[k] = np.stack(stacks).reshape(*shape, *stacks[0].shape)
        out["next"][k] = np.stack(nstacks).reshape(*shape, *nstacks[0].shape)
    return out


def with_ids(data):
    """``data`` with ``("collector", "traj_ids")``: the ground-truth episode number."""
    return {**data, "collector": {"traj_ids": data["observation"][..., 1]}}


def run(ndim, cap, sampler, compact, t_lens, lengths, resets, axis=-1, seed=0, ids=False):
    plain, fs, add, sample = buffers(ndim, cap, sampler, compact, axis)
    sim = Episodes(LANES[ndim], lengths, seed)
    tag = with_ids if ids else (lambda d: d)
    first = tag(sim.batch(1))
    sp, sf = plain.init(first), fs.init(first)
    for i, (t, reset) in enumerate(zip(t_lens, resets)):
        # A cut without done/truncated: seen through compact_next's breaks or the stored ids.
        data = tag(sim.batch(t, reset=reset and (compact or ids)))
        sp, sf = add(plain, sp, data), add(fs, sf, data)
        key = jax.random.key(seed * 100 + i)
        sp, bp, ip = sample(plain, sp, key)
        sf, bf, inf = sample(fs, sf, key)
        assert_tree_equal(inf["index"], ip["index"])
        np.testing.assert_array_equal(inf["mask"], ip["mask"])
        index = ip["index"] if isinstance(ip["index"], tuple) else (ip["index"],)
        want = reference(sp, bp, index, np.asarray(ip["mask"]), axis)
        assert_tree_equal(bf, want)


@pytest.mark.parametrize("compact", (False, True))
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_stacks_match_reference(sampler, compact):
    run(2, 6, sampler, compact, (3, 1, 11, 4), (1, 2, 5), (False, True, False, True))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_traj_ids_see_unflagged_cuts(sampler):
    """Without ``compact_next``, stored trajectory ids (``("collector", "traj_ids")``, found
    by default) mark the ``reset_at_each_iter`` starts that no done flag marks."""
    run(2, 6, sampler, False, (3, 1, 11, 4), (2, 5), (False, True, False, True), ids=True)


def test_no_boundary_information_warns():
    data = {"observation": jnp.zeros((2, 1, 3)), "next": {"observation": jnp.zeros((2, 1, 3))}}
    mk = lambda st, **kw: ReplayBuffer(storage=st, batch_size=2, frame_stack=FrameStack(2, **kw))  # noqa: E731
    with pytest.warns(UserWarning, match="trajectory ids"):
        mk(LazyTensorStorage(8, ndim=2)).init(data)
    # compact_next's breaks are no boundaries (issue 26 item 6): it warns too
    with pytest.warns(UserWarning, match="final observation equals the next reset observation"):
        mk(LazyTensorStorage(8, ndim=2, compact_next=True)).init(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mk(LazyTensorStorage(8, ndim=2)).init({**data, "episode": jnp.zeros((2, 1), jnp.int32)})
        mk(LazyTensorStorage(8, ndim=2, compact_next=True)).init({**data, "next": {**data["next"],
                                                                                  "done": jnp.zeros((2, 1), bool)}})
    with pytest.raises(KeyError, match="traj"):
        mk(LazyTensorStorage(8, ndim=2), traj_key=("collector", "traj")).init(data)
    with pytest.raises(ValueError, match="traj_key"):
        FrameStack(2, traj_key=["collector", "traj_ids"])


def test_axis_first_and_uint8():
    plain, fs, add, sample = buffers(1, 8, "random", True, 0)
    run(1, 8, "random", True, (5, 5), (4,), (False, False), axis=0)
    sim = Episodes((), (4,), 0)
    sf = fs.init(sim.batch(1))
    sf = add(fs, sf, sim.batch(5))
    _, b, _ = sample(fs, sf, jax.random.key(0))
    assert b["pixels"].dtype == jnp.uint8 and b["pixels"].shape == (4, K, 2, 2)
    assert b["next"]["pixels"].shape == (4, K, 2, 2)


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    ndim=st.sampled_from((1, 2, 3)),
    cap=st.sampled_from((4, 7)),
    sampler=st.sampled_from(sorted(SAMPLERS)),
    compact=st.booleans(),
    t_lens=st.lists(st.sampled_from((1, 3, 11)), min_size=1, max_size=4),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    resets=st.lists(st.booleans(), min_size=4, max_size=4),
    seed=st.integers(0, 50),
)
def test_stacks_property(ndim, cap, sampler, compact, t_lens, lengths, resets, seed):
    run(ndim, cap, sampler, compact, t_lens, lengths, resets, seed=seed)


def test_errors():
    sim = Episodes((2,), (3,), 0)
    with pytest.raises(KeyError, match="frames"):
        ReplayBuffer(storage=LazyTensorStorage(8, ndim=2), batch_size=2,
                     frame_stack=FrameStack(2, keys=("frames",))).init(sim.batch(1))
    with pytest.raises(ValueError, match="num_frames"):
        FrameStack(0)
    with pytest.raises(ValueError, match="axis"):
        ReplayBuffer(storage=LazyTensorStorage(8, ndim=2), batch_size=2,
                     frame_stack=FrameStack(2, axis=3)).init(sim.batch(1))


def test_compact_break_is_not_an_episode_boundary():
    """Issue 26 item 6: an episode ends in final observation 0 and the next one starts from reset
    observation 0, so ``compact_next`` sees no break there. With the done flag stored the first
    step of the new episode stacks ``[0, 0, 0]``; without it ``init`` warns (the stack would be
    ``[5, 6, 0]``)."""
    obs = jnp.asarray([[4.0, 5.0, 6.0, 0.0, 1.0]])
    nxt = jnp.asarray([[5.0, 6.0, 0.0, 1.0, 2.0]])
    done = jnp.asarray([[False, False, True, False, False]])
    data = {"observation": obs, "next": {"observation": nxt, "done": done}}
    rb = ReplayBuffer(storage=LazyTensorStorage(8, ndim=2, compact_next=True), batch_size=2,
                      frame_stack=FrameStack(3, keys=("observation",)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = rb.add(rb.init(data), data)
    ctx_index = (jnp.zeros((2,), jnp.int32), jnp.asarray([3, 4], jnp.int32))
    from rlbuf.buffers.stages import SampleContext

    batch = rb.storage.gather(state.layout, state.storage, ctx_index)
    out = rb.stages.apply(batch, SampleContext(rb.storage, state.storage, state.ring, ctx_index, {}))
    np.testing.assert_array_equal(np.asarray(out["observation"]), [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(out["next"]["observation"]), [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    no_flags = {"observation": obs, "next": {"observation": nxt}}
    with pytest.warns(UserWarning, match="value|final observation equals"):
        rb.init(no_flags)
