"""``rlbuf.regroup`` and ``rlbuf.checkpoint.restore(..., regroup=True)``: a grouped buffer state
of ``G`` groups becomes exactly the state a buffer of ``G'`` groups holds after the same batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlbuf
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.scaling.regrouping import regroup
from rlbuf.scaling.sharding import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

LANES, T = 8, 6  # 8 lanes in all: 4 workers x 2 lanes or 2 workers x 4 lanes


def batches(n: int, seed: int = 0):
    """``n`` batches [8 lanes, T] with trajectory ids unique over lanes (episodes of 1-5 steps)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((LANES, n * T), np.int32)
    nxt = LANES
    for lane in range(LANES):
        cur = lane
        for t in range(n * T):
            if rng.random() < 0.3:
                cur, nxt = nxt, nxt + 1
            ids[lane, t] = cur
    x = rng.normal(size=(LANES, n * T, 2)).astype(np.float32)
    return [{"traj": ids[:, i * T:(i + 1) * T], "x": x[:, i * T:(i + 1) * T]} for i in range(n)]


def buffer(sampler):
    return ReplayBuffer(storage=LazyTensorStorage(LANES * 10, ndim=2), sampler=sampler, batch_size=16)


def filled(rb, workers: int, data):
    pw = PerWorkerReplayBuffer(rb, workers)
    per = lambda b: jax.tree_util.tree_map(lambda x: x.reshape(workers, LANES // workers, *x.shape[1:]), b)  # noqa: E731
    state = pw.init(jax.tree_util.tree_map(lambda x: x[0], per(data[0])))
    for b in data:  # 3 batches of 6 steps into rings of 10: wrapped
        state = pw.add(state, per(b))
    return pw, state


def assert_same(a, b):
    assert a.layout == b.layout
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SAMPLERS = {"random": RandomSampler(), "slice": SliceSampler(slice_len=2, traj_key="traj")}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_regroup_equals_the_state_built_with_that_group_count(name):
    rb, data = buffer(SAMPLERS[name]), batches(4)
    pw4, s4 = filled(rb, 4, data[:3])
    pw2, s2 = filled(rb, 2, data[:3])
    if name == "slice":  # the queue is built for the slice length by the add after a sample
        s4, s2 = pw4.sample(s4, jax.random.key(0))[0], pw2.sample(s2, jax.random.key(0))[0]
        s4, s2 = pw4.add(s4, _per(data[3], 4)), pw2.add(s2, _per(data[3], 2))
        assert int(s2.sampler.thr[0]) == 2
    assert_same(regroup(s4, 2), s2)  # merge: 4 groups of 2 lanes -> 2 groups of 4
    assert_same(regroup(s2, 4), s4)  # split
    assert_same(regroup(s4, 1), regroup(s2, 1))
    # sampling the regrouped state is sampling the native one
    k = jax.random.key(7)
    for x, y in zip(jax.tree_util.tree_leaves(pw2.sample(regroup(s4, 2), k)[1:]),
                    jax.tree_util.tree_leaves(pw2.sample(s2, k)[1:])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _per(b, workers):
    return jax.tree_util.tree_map(lambda x: x.reshape(workers, LANES // workers, *x.shape[1:]), b)


def test_regroup_refuses_what_cannot_be_exact():
    data = batches(2)
    pw4, s4 = filled(buffer(RandomSampler()), 4, data)
    uneven = pw4.add_worker(s4, 1, jax.tree_util.tree_map(lambda x: x[1], _per(data[0], 4)))
    with pytest.raises(ValueError, match=r"saved with 4 groups, restoring into 2: groups \[0, 1\] merge .*'cursor'"):
        regroup(uneven, 2)
    assert regroup(uneven, 8).count.shape == (8,)  # splitting is always exact
    with pytest.raises(ValueError, match=r"8 lanes\), which do not split evenly into 3"):
        regroup(s4, 3)
    _, w4 = filled(buffer(SamplerWithoutReplacement()), 4, data)
    with pytest.raises(ValueError, match=r"4 groups, restoring into 2: the sampler state \(WithoutReplacementState\)"):
        regroup(w4, 2)
    flat = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(40), batch_size=4), 2)
    f2 = flat.init({"x": jnp.zeros((4,))})
    with pytest.raises(ValueError, match=r"saved with 2 groups, restoring into 1: an ndim=1 buffer"):
        regroup(f2, 1)


def test_checkpoint_restore_names_group_counts_and_regroups(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from jax.sharding import Mesh

    data = batches(3)
    rb = buffer(RandomSampler())
    _, s4 = filled(rb, 4, data)
    pw2, s2 = filled(rb, 2, data)
    rlbuf.checkpoint.save(tmp_path / "ckpt", s4)
    target = jax.eval_shape(lambda: s2)
    with pytest.raises(rlbuf.checkpoint.CheckpointMismatchError, match="saved with 4 groups, restoring into 2"):
        rlbuf.checkpoint.restore(tmp_path / "ckpt", target)
    assert_same(rlbuf.checkpoint.restore(tmp_path / "ckpt", target, regroup=True), s2)
    # into a sharded buffer of one device: committed to the target's sharding, samples as one group
    srb = rlbuf.shard(rb, Mesh(np.array(jax.devices()[:1]), ("data",)))
    tgt = srb.init(jax.tree_util.tree_map(jnp.asarray, data[0]))
    got = rlbuf.checkpoint.restore(tmp_path / "ckpt", tgt, regroup=True)
    assert got.storage["x"].sharding == tgt.storage["x"].sharding and got.count.shape == (1,)
    assert int(srb.num_stored(got)) == 8 * 10
    np.testing.assert_array_equal(np.asarray(got.storage["x"][0]), np.asarray(s2.storage["x"]).reshape(8, 10, 2))
