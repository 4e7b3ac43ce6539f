"""Fuzz suite (issue 12): random add sequences (short, wrapping, longer than the ring) into
buffers of ndim 1/2/3, for every sampler x writer combination ``ReplayBuffer.init`` accepts,
with the int32 counters (``added``, slice stamps / trajectory numbers / queue entries,
epochs) started far from zero or just below their limit, checked after every add against the
plain-numpy reference model (``tests/reference.py``):

- the storage, cursor and count equal the reference ring (round-robin writer);
- every sampled item with ``mask`` True is a stored step (its data is what ``info["index"]``
  points at, and that step is still in the reference ring);
- slices are valid: one trajectory, consecutive steps, starting where the reference says a
  slice may start; prioritized weights are in ``(0, 1]``;
- an empty buffer cannot sample and returns only masked items.

Each configuration's jitted functions are shared by all its Hypothesis examples (few shapes:
the time lengths come from a small set), so the suite compiles once per configuration.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import NumpyRingBuffer, stored_step, valid_slice_starts

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage
from rlbuf.writers import MaxValueWriter, RoundRobinWriter

BATCH = 4
INT32_MAX = 2**31 - 1
# (lanes, capacity per lane): 8 is a power of two, 12 and 6 not (counters cross 2**31 with every one).
LAYOUTS = {1: ((), 12), 2: ((2,), 8), 3: ((2, 2), 6)}

SAMPLERS = {
    "random": lambda size: RandomSampler(),
    "without_replacement": lambda size: SamplerWithoutReplacement(),
    "without_replacement_drop_last": lambda size: SamplerWithoutReplacement(drop_last=True),
    "prioritized": lambda size: PrioritizedSampler(size, 0.7, 0.5),
    "slice": lambda size: SliceSampler(slice_len=2, traj_key="traj"),
    "slice_not_strict": lambda size: SliceSampler(slice_len=2, traj_key="traj", strict_length=False),
    "slice_without_replacement": lambda size: SliceSamplerWithoutReplacement(slice_len=2, traj_key="traj"),
    "prioritized_slice": lambda size: PrioritizedSliceSampler(size, 0.7, 0.5, slice_len=2, traj_key="traj"),
}
SLICES = ("slice", "slice_not_strict", "slice_without_replacement", "prioritized_slice")
WRITERS = {"round_robin": RoundRobinWriter, "max_value": lambda: MaxValueWriter(rank_key=("next", "reward"))}


def _configs():
    out = []
    for ndim in LAYOUTS:
        for s in SAMPLERS:
            for w in WRITERS:
                # MaxValueWriter keeps no time order: slice samplers cannot work with it (issue 11
                # makes init refuse the pair); it takes ndim=1 storage only.
                if w == "max_value" and (ndim != 1 or s in SLICES):
                    continue
                out.append((ndim, s, w))
    return out


class Generator:
    """``[*lanes, T]`` batches: ``obs = (flat lane, step number in the lane)``, a TorchRL-style
    global trajectory id per lane (episodes of 1-5 steps), done at each episode's last step."""

    def __init__(self, lanes, seed):
        self.lanes = lanes
        self.n = int(np.prod(lanes, dtype=int))
        self.rng = np.random.default_rng(seed)
        self.stamp = 0
        self.ids = np.arange(self.n)
        self.next_id = self.n
        self.left = self.rng.integers(1, 6, self.n)

    def __call__(self, t):
        traj = np.zeros((self.n, t), np.int32)
        done = np.zeros((self.n, t), bool)
        for s in range(t):
            traj[:, s] = self.ids
            self.left -= 1
            for i in np.flatnonzero(self.left == 0):
                done[i, s] = True
                self.ids[i], self.next_id = self.next_id, self.next_id + 1
                self.left[i] = self.rng.integers(1, 6)
        obs = np.stack([np.broadcast_to(np.arange(self.n)[:, None], (self.n, t)),
                        np.broadcast_to(self.stamp + np.arange(t)[None, :], (self.n, t))], -1).astype(np.int32)
        self.stamp += t
        shape = (*self.lanes, t)
        return {"obs": obs.reshape(*shape, 2), "traj": traj.reshape(shape),
                "next": {"done": done.reshape(shape),
                         "reward": self.rng.normal(size=shape).astype(np.float32)}}


@functools.lru_cache(maxsize=None)
def buffer(ndim, sampler, writer):
    lanes, cap = LAYOUTS[ndim]
    size = cap * int(np.prod(lanes, dtype=int))
    rb = ReplayBuffer(storage=LazyTensorStorage(size, ndim=ndim), sampler=SAMPLERS[sampler](size),
                      writer=WRITERS[writer](), batch_size=BATCH)
    return rb, jax.jit(rb.add, donate_argnums=0), jax.jit(rb.sample), jax.jit(rb.can_sample)


def near_limits(state, start: int):
    """The empty state with every monotone int32 counter started at ``start``."""
    c = jnp.asarray(start, jnp.int32)
    s = state.sampler
    changes = {}
    if hasattr(s, "traj"):
        # (the slice stamps count from the buffer's `added`, set below)
        changes["traj"] = dataclasses.replace(s.traj, n_traj=jnp.full_like(s.traj.n_traj, c))
    if hasattr(s, "queued"):
        changes["queued"] = jnp.full_like(s.queued, c)
    if hasattr(s, "epoch"):
        changes["epoch"] = jnp.full_like(s.epoch, c)
    return dataclasses.replace(state, added=jnp.full_like(state.added, c),
                               sampler=dataclasses.replace(s, **changes) if changes else s)


def _index(info, ndim, lanes):
    """Flat lane and time slot of every sampled item."""
    idx = info["index"]
    if ndim == 1:
        t = np.asarray(idx)
        return np.zeros_like(t), t
    idx = [np.asarray(i) for i in idx]
    lane = np.ravel_multi_index(tuple(idx[:-1]), lanes) if len(lanes) > 1 else idx[0]
    return lane, idx[-1]


def check_sample(ndim, sampler, writer, state, ref, batch, info):
    lanes, cap = LAYOUTS[ndim]
    mask = np.asarray(info["mask"]) if "mask" in info else np.ones(np.shape(batch["traj"]), bool)
    obs, traj = np.asarray(batch["obs"]), np.asarray(batch["traj"])
    lane, t = _index(info, ndim, lanes)
    storage_obs = np.asarray(state.storage["obs"]).reshape(-1, cap, 2)
    storage_traj = np.asarray(state.storage["traj"]).reshape(-1, cap)
    for k in zip(*np.nonzero(mask)):
        lane_k, t_k = int(lane[k]), int(t[k])
        assert (storage_obs[lane_k, t_k] == obs[k]).all() and storage_traj[lane_k, t_k] == traj[k], k
        assert obs[k][0] == lane_k, (k, obs[k], lane_k)
        if writer == "round_robin":
            assert stored_step(ref, lane_k, int(obs[k][1])), (k, obs[k], ref.added, ref.count)
    if ref.count == 0:
        assert not mask.any()
    if sampler in SLICES:
        strict = sampler != "slice_not_strict"
        starts = valid_slice_starts(ref, ("traj",), 2, strict=strict)
        oldest = ref.added - ref.count
        if starts and sampler != "slice_without_replacement":  # (its epochs may be used up)
            # With replacement, every slice comes from an eligible trajectory when there is one
            # (the bookkeeping must not lose eligible trajectories, e.g. when stamps cross 2**31).
            assert mask.any(axis=1).all(), (mask, sorted(starts))
        for i in range(obs.shape[0]):
            m = mask[i]
            if not m.any():
                continue
            assert m[0] and (not strict or m.all()) and (np.diff(m.astype(int)) <= 0).all(), m
            real = obs[i][m]
            assert (real[:, 0] == real[0, 0]).all() and (np.diff(real[:, 1]) == 1).all(), real
            assert (traj[i][m] == traj[i][0]).all(), traj[i]
            assert (int(real[0, 0]), int(real[0, 1]) - oldest) in starts, (real, sorted(starts))
    if "weight" in info:
        w = np.asarray(info["weight"])[mask]
        assert np.isfinite(w).all() and (w > 0).all() and (w <= 1 + 1e-6).all(), w


def run(ndim, sampler, writer, lengths, seed, start):
    rb, add, sample, can_sample = buffer(ndim, sampler, writer)
    lanes, cap = LAYOUTS[ndim]
    gen = Generator(lanes, seed)
    ref = NumpyRingBuffer(cap, lanes)
    first = gen(lengths[0])
    state = rb.init(jax.tree.map(jnp.asarray, first))
    if start is not None:
        state = near_limits(state, start)
    key = jax.random.key(seed)
    state, batch, info = sample(state, key)  # empty buffer
    assert not bool(can_sample(state))
    check_sample(ndim, sampler, writer, state, ref, batch, info)
    data = first
    for i, t in enumerate(lengths):
        if i:
            data = gen(t)
        state = add(state, jax.tree.map(jnp.asarray, data))
        ref.add(data)
        if writer == "round_robin":
            assert int(state.cursor) == ref.cursor and int(state.count) == ref.count
            np.testing.assert_array_equal(np.asarray(state.storage["obs"]), ref.storage()["obs"])
            np.testing.assert_array_equal(np.asarray(state.storage["traj"]), ref.storage()["traj"])
        else:
            assert int(state.count) == min(ref.added, cap)
        for _ in range(2):
            key, k = jax.random.split(key)
            state, batch, info = sample(state, k)
            check_sample(ndim, sampler, writer, state, ref, batch, info)


@pytest.mark.parametrize("ndim,sampler,writer", _configs())
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_against_reference(ndim, sampler, writer, data):
    lanes, cap = LAYOUTS[ndim]
    lengths = data.draw(st.lists(st.sampled_from([1, 3, cap + 3]), min_size=1, max_size=6), label="lengths")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    total = sum(lengths)
    # Counters: from 0, from far from zero, or just below 2**31 - 1 (they cross the int32 limit,
    # whatever the capacity: see README "Guarantees").
    where = data.draw(st.sampled_from(["zero", "far", "limit"]), label="counters")
    if where == "zero":
        start = None
    elif where == "far":
        start = INT32_MAX - 2 * total - data.draw(st.integers(0, 3), label="margin")
    else:
        start = INT32_MAX - data.draw(st.integers(0, total), label="margin")
    run(ndim, sampler, writer, lengths, seed, start)


def test_every_combination_is_covered():
    assert len(_configs()) == 3 * len(SAMPLERS) + 4  # + MaxValueWriter with the 4 non-slice samplers, ndim=1


def test_slice_counters_crossing_the_limit_with_other_capacities():
    """ndim=1, capacity 12 (not a power of two): the stamps, trajectory numbers and queue counters
    cross 2**31 - 1 and every slice stays right (records and queue entries are found through
    per-lane slots kept modulo the capacity, not through ``number % capacity``)."""
    run(1, "slice", "round_robin", [3, 1, 15, 3, 15, 1, 3, 15, 3, 15], 1, INT32_MAX - 10)
