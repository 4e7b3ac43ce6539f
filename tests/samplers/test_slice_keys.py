"""How slice samplers find trajectories, as TorchRL does: ``traj_key`` and ``end_key`` given
together (the end flags when the ids are not stored), ``end_keys`` OR-ed, and auto-detection
when neither is given (``("collector","traj_ids")``, then ``"episode"``, then
``("next","done")``): each resolution gives exactly the batches of the explicit key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_slice import GroundTruth

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

LANES, CAP, N, S = (2,), 16, 3, 4


def base_data():
    b = GroundTruth(LANES, (4, 6, 5)).batch(20)
    term = b["next"]["done"] & ~b["next"]["truncated"]
    return {"obs": b["obs"], "ep": b["ep"],
            "next": {"terminated": term, "truncated": b["next"]["truncated"], "done": b["next"]["done"]}}


def draws(sampler, data, n=2):
    """``n`` samples after one add, compiled as one function (few compilations: fast tests)."""
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP * 2, ndim=2), sampler=sampler, batch_size=S * N)
    data = jax.tree_util.tree_map(jnp.asarray, data)

    @jax.jit
    def run(data):
        state = rb.add(rb.init(data), data)
        out = []
        for i in range(n):
            state, batch, info = rb.sample(state, jax.random.key(i))
            out.append((batch["obs"], info["mask"]))
        return out

    return jax.tree_util.tree_map(np.asarray, run(data))


def same(a, b):
    for (oa, ma), (ob, mb) in zip(a, b):
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(ma, mb)


CLASSES = {
    "slice": lambda **kw: SliceSampler(slice_len=N, **kw),
    "without_replacement": lambda **kw: SliceSamplerWithoutReplacement(slice_len=N, **kw),
    "prioritized": lambda **kw: PrioritizedSliceSampler(64, 0.6, 0.4, slice_len=N, **kw),
}


@pytest.mark.parametrize("cls", ["slice"])  # the resolution is shared by every slice sampler
def test_auto_detection_order(cls):
    make = CLASSES[cls]
    d = base_data()
    ids = dict(d, collector={"traj_ids": d["ep"]})
    want = draws(make(traj_key="ep"), d)
    same(draws(make(), ids), draws(make(traj_key=("collector", "traj_ids")), ids))
    same(draws(make(), ids), want)
    episode = {k: v for k, v in d.items() if k != "ep"} | {"episode": d["ep"]}
    same(draws(make(), episode), want)
    no_ids = {k: v for k, v in d.items() if k != "ep"}
    same(draws(make(), no_ids), draws(make(end_key=("next", "done")), no_ids))
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP * 2, ndim=2), sampler=make(), batch_size=S * N)
    with pytest.raises(ValueError, match=r"none of \('collector', 'traj_ids'\), 'episode', \('next', 'done'\)"):
        rb.init({"obs": jnp.zeros((2, 1, 2))})


@pytest.mark.parametrize("cls", ["slice"])  # the resolution is shared by every slice sampler
def test_traj_key_with_end_key_falls_back_to_the_flags(cls):
    make = CLASSES[cls]
    d = base_data()
    no_ids = {k: v for k, v in d.items() if k != "ep"}
    both = make(traj_key="ep", end_key=("next", "done"))
    same(draws(both, d), draws(make(traj_key="ep"), d))  # ids stored: they are used
    same(draws(both, no_ids), draws(make(end_key=("next", "done")), no_ids))  # absent: the end flags


@pytest.mark.parametrize("cls", ["slice", "prioritized"])
def test_end_keys_are_ored(cls):
    make = CLASSES[cls]
    d = base_data()
    split = {"obs": d["obs"], "next": {"terminated": d["next"]["terminated"], "truncated": d["next"]["truncated"]}}
    want = draws(make(end_key=("next", "done")), d)
    same(draws(make(end_keys=[("next", "terminated"), ("next", "truncated"), ("next", "absent")]), split), want)


@pytest.mark.parametrize("cls", ["without_replacement", "prioritized"])
def test_auto_detection_in_the_other_samplers(cls):
    d = base_data()
    ids = dict(d, collector={"traj_ids": d["ep"]})
    same(draws(CLASSES[cls](), ids, n=1), draws(CLASSES[cls](traj_key=("collector", "traj_ids")), ids, n=1))
