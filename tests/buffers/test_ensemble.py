"""``ReplayBufferEnsemble``: exactly ``n_i`` items from member ``i``, in member order, each a
valid sample of its member (located by ``info["index"]``, slices inside one trajectory), with
every sampler, inside ``jit`` with donation, through checkpoints; bad configurations refused.

Data encode where they come from: ``obs = [member, traj_id, step]`` (int32), so every sampled
item can be checked against the member it claims to come from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlbuf
from rlbuf import checkpoint
from rlbuf.buffers.ensemble import EnsembleState, ReplayBufferEnsemble

TRAJ = ("collector", "traj_ids")


def episodes(member: int, lanes: tuple, t_len: int, seed: int, first_id: int = 0) -> dict:
    """``[*lanes, T]`` batch of random-length episodes; ids unique across lanes."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(lanes)) if lanes else 1
    obs = np.zeros((n, t_len, 3), np.int32)
    ids = np.zeros((n, t_len), np.int32)
    done = np.zeros((n, t_len), bool)
    nxt = first_id
    for lane in range(n):
        step, cur, left = 0, nxt, int(rng.integers(2, 9))
        nxt += 1
        for t in range(t_len):
            obs[lane, t] = (member, cur, step)
            ids[lane, t] = cur
            step += 1
            left -= 1
            if left == 0:
                done[lane, t] = True
                step, cur, left = 0, nxt, int(rng.integers(2, 9))
                nxt += 1
    reshape = lambda x: x.reshape(*lanes, t_len, *x.shape[2:]) if lanes else x[0]  # noqa: E731
    return {
        "observation": jnp.asarray(reshape(obs)),
        "reward": jnp.asarray(reshape(obs[..., 2].astype(np.float32))),
        "next": {"done": jnp.asarray(reshape(done)), "truncated": jnp.asarray(reshape(done & False))},
        "collector": {"traj_ids": jnp.asarray(reshape(ids))},
    }


FLAT = {
    "random": lambda: rlbuf.RandomSampler(),
    "without_replacement": lambda: rlbuf.SamplerWithoutReplacement(),
    "prioritized": lambda: rlbuf.PrioritizedSampler(64, 0.7, 0.5),
}
SLICES = {
    "slice": lambda: rlbuf.SliceSampler(slice_len=2, traj_key=TRAJ),
    "slice_without_replacement": lambda: rlbuf.SliceSamplerWithoutReplacement(slice_len=2, traj_key=TRAJ),
    "prioritized_slice": lambda: rlbuf.PrioritizedSliceSampler(64, 0.7, 0.5, slice_len=2, traj_key=TRAJ),
}


def make(samplers, ndims, sizes):
    bufs = [
        rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(48, ndim=nd), sampler=s, batch_size=8)
        for s, nd in zip(samplers, ndims)
    ]
    return ReplayBufferEnsemble(*bufs, num_per_buffer=sizes)


LANES = {1: (), 2: (2,), 3: (2, 2)}


def fill(ens, ndims, t_len=20):
    data = [episodes(m, LANES[nd], t_len, seed=m) for m, nd in enumerate(ndims)]
    state = ens.init(*data)
    add = jax.jit(ens.add_to, static_argnums=1, donate_argnums=0)
    for m, d in enumerate(data):
        state = add(state, m, d)
    return state


def check_batch(ens, state, batch, info, slices: bool):
    """Exactly n_i items from member i, in order, each equal to its member's storage at its index."""
    obs = np.asarray(batch["observation"])
    src = np.asarray(info["buffer"])
    rows = np.concatenate([np.full(rb.batch_size // (2 if slices else 1), i) for i, rb in enumerate(ens.members)])
    expect_src = rows[:, None].repeat(2, 1) if slices else rows
    np.testing.assert_array_equal(src, expect_src)
    np.testing.assert_array_equal(obs[..., 0], src)  # the data itself says which member it came from
    start = 0
    for i, (rb, s) in enumerate(zip(ens.members, state.buffers)):
        n = rows.tolist().count(i)
        stored = np.asarray(s.storage["observation"][info["index"][i]])
        np.testing.assert_array_equal(stored, obs[start : start + n])
        if slices:  # one trajectory, consecutive steps
            part = obs[start : start + n]
            assert (part[:, :, 1] == part[:, :1, 1]).all()
            np.testing.assert_array_equal(np.diff(part[:, :, 2], axis=1), 1)
        start += n
    assert start == obs.shape[0]


@pytest.mark.parametrize("names", [("random", "prioritized"), ("without_replacement", "random", "prioritized")])
def test_flat_members(names):
    ndims = (1, 2, 3)[: len(names)]
    sizes = tuple(range(3, 3 + len(names)))
    ens = make([FLAT[n]() for n in names], ndims, sizes)
    state = fill(ens, ndims)
    assert bool(ens.can_sample(state))
    sample = jax.jit(ens.sample, donate_argnums=0)  # the whole ensemble state donated
    for k in range(3):
        state, batch, info = sample(state, jax.random.key(k))
        check_batch(ens, state, batch, info, slices=False)
        assert info["mask"].shape == info["weight"].shape == (sum(sizes),)
    assert sample._cache_size() == 1


@pytest.mark.parametrize("names", [("slice", "prioritized_slice"), ("slice_without_replacement", "slice")])
def test_slice_members(names):
    ens = make([SLICES[n]() for n in names], (1, 2), (6, 10))
    state = fill(ens, (1, 2))
    state, batch, info = jax.jit(ens.sample)(state, jax.random.key(1))
    assert batch["observation"].shape == (8, 2, 3)  # 3 + 5 slices of 2
    assert info["buffer"].shape == (8, 2)
    check_batch(ens, state, batch, info, slices=True)


def test_update_priority_reaches_prioritized_member_only():
    ens = make([FLAT["random"](), FLAT["prioritized"]()], (1, 1), (4, 4))
    state = fill(ens, (1, 1))
    state, batch, info = ens.sample(state, jax.random.key(0))
    prio = jnp.arange(1.0, 9.0)
    new = jax.jit(ens.update_priority)(state, info["index"], prio)
    # Member 1 as if updated directly with its part of the priorities; member 0 untouched.
    direct = ens.members[1].update_priority(state.buffers[1], info["index"][1], prio[4:])
    for a, b in zip(jax.tree.leaves((state.buffers[0], direct)), jax.tree.leaves(new.buffers)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.buffers[1]),
                                                          jax.tree.leaves(new.buffers[1])))
    with pytest.raises(ValueError, match="tuple of 2"):
        ens.update_priority(state, info["index"][1], prio)


@pytest.mark.slow
def test_checkpoint_round_trip(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    ens = make([FLAT["without_replacement"](), SLICES["prioritized_slice"]()], (1, 2), (4, 4))
    ens = ReplayBufferEnsemble(
        ens.buffers[0], rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(48, ndim=2),
                                           sampler=FLAT["prioritized"](), batch_size=4),
        num_per_buffer=(4, 4),
    )
    state = fill(ens, (1, 2))
    sample = jax.jit(ens.sample)
    state, _, _ = sample(state, jax.random.key(0))  # a without-replacement epoch in progress
    checkpoint.save(tmp_path / "ens", state)
    restored = checkpoint.restore(tmp_path / "ens", jax.eval_shape(lambda: state))
    assert isinstance(restored, EnsembleState)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, b1, i1 = sample(state, jax.random.key(5))
    _, b2, i2 = sample(restored, jax.random.key(5))
    for a, b in zip(jax.tree.leaves((b1, i1)), jax.tree.leaves((b2, i2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sample._cache_size() == 1


def test_num_per_buffer_rebuilds_members_and_shares_states():
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(32), batch_size=16)
    ens = ReplayBufferEnsemble(rb, rb, num_per_buffer=(2, 3))
    assert [m.batch_size for m in ens.members] == [2, 3] and ens.batch_size == 5
    assert ReplayBufferEnsemble(rb, rb).batch_size == 32  # default: the members' batch sizes
    d = episodes(0, (), 10, seed=0)
    s = rb.add(rb.init(d), d)  # a state filled with the original buffer
    state = ens.from_states(s, s)
    _, batch, _ = ens.sample(state, jax.random.key(0))
    assert batch["observation"].shape == (5, 3)
    assert len(state) == 20
    assert hash(ens) == hash(ReplayBufferEnsemble(rb, rb, num_per_buffer=(2, 3)))
    import dataclasses

    assert dataclasses.replace(ens, num_per_buffer=(4, 4)).batch_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        ens.num_per_buffer = (1, 1)


def test_bad_configurations_raise():
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(32), batch_size=4)
    sl = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(32), sampler=SLICES["slice"](), batch_size=4)
    with pytest.raises(ValueError, match="num_per_buffer has 1 entries for 2"):
        ReplayBufferEnsemble(rb, rb, num_per_buffer=(4,))
    with pytest.raises(ValueError, match=r"num_per_buffer\[1\]"):
        ReplayBufferEnsemble(rb, rb, num_per_buffer=(4, 0))
    with pytest.raises(TypeError, match="buffer 1"):
        ReplayBufferEnsemble(rb, "rb")
    d = episodes(0, (), 10, seed=0)
    with pytest.raises(ValueError, match="concatenated along the first axis"):
        ReplayBufferEnsemble(rb, sl).init(d, d)  # flat [4, 3] and slices [2, 2, 3]
    other = dict(d, reward=d["reward"].astype(jnp.int32))
    with pytest.raises(ValueError, match="'reward'"):
        ReplayBufferEnsemble(rb, rb).init(d, other)
    with pytest.raises(ValueError, match="multiple|divisible|slice_len"):
        ReplayBufferEnsemble(rb, sl, num_per_buffer=(4, 3)).init(d, d)
    with pytest.raises(ValueError, match="buffer index 2"):
        ReplayBufferEnsemble(rb, rb).add_to(ReplayBufferEnsemble(rb, rb).init(d, d), 2, d)


_PROP: dict = {}


def _prop_fns(sizes):
    if sizes not in _PROP:
        ens = make([FLAT["random"](), FLAT["without_replacement"]()], (1, 2), sizes)
        ex = [episodes(0, (), 7, 0), episodes(1, (2,), 7, 0)]
        fns = jax.jit(ens.add_to, static_argnums=1, donate_argnums=0), jax.jit(ens.sample)
        _PROP[sizes] = ens, ens.init(*ex), *fns
    ens, empty, add, sample = _PROP[sizes]
    return ens, jax.tree.map(jnp.copy, empty), add, sample  # a fresh copy: add donates it


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([(2, 3), (5, 1)]), st.integers(1, 12), st.integers(0, 2**16))
def test_property_counts_and_sources(sizes, n_adds, seed):
    """Random fills (up to 84 steps per lane into 48 or 24 slots: wrap-arounds), random keys and
    both size splits: exact counts, sources and items hold (jitted once per split)."""
    ens, state, add, sample = _prop_fns(sizes)
    for k in range(n_adds):
        data = [episodes(0, (), 7, seed + k, first_id=100 * k), episodes(1, (2,), 7, seed + k, first_id=100 * k)]
        state = add(add(state, 0, data[0]), 1, data[1])
    state, batch, info = sample(state, jax.random.key(seed))
    check_batch(ens, state, batch, info, slices=False)
    assert sample._cache_size() == 1


def test_update_priority_with_wrong_length_names_both_sizes():
    """Issue 26 item 11: a priority array of another length than the batch names both sizes."""
    ens = make([FLAT["random"](), FLAT["prioritized"]()], (1, 1), (4, 4))
    state = fill(ens, (1, 1))
    state, batch, info = ens.sample(state, jax.random.key(0))
    for bad in (jnp.ones(3), jnp.ones(9), jnp.ones((8, 2))):
        with pytest.raises(ValueError, match=rf"priority has shape \[{bad.shape[0]}.*the batch has 8 rows "
                                             r"\(4 from buffer 0, 4 from buffer 1"):
            ens.update_priority(state, info["index"], bad)


def test_from_states_with_a_state_of_another_sampler_names_member_and_part():
    """Issue 26 item 12: a member state made by a buffer with another sampler is refused,
    naming the member and what differs."""
    d = episodes(0, (), 10, seed=0)
    rand = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(32), batch_size=4)
    prio = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(32), sampler=FLAT["prioritized"](), batch_size=4)
    ens = ReplayBufferEnsemble(rand, prio)
    with pytest.raises(ValueError, match=r"state 1's sampler state does not match buffer 1's PrioritizedSampler"):
        ens.from_states(rand.init(d), rand.init(d))
    with pytest.raises(ValueError, match=r"state 0's sampler state does not match buffer 0's RandomSampler"):
        ens.from_states(prio.init(d), prio.init(d))
    good = ens.from_states(rand.init(d), prio.init(d))  # the right states are accepted
    assert len(good) == 0
