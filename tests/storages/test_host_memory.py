"""``LazyTensorStorage(memory_kind="pinned_host")``: the storage stays in host memory through
jitted, donated ``add`` and ``sample``; samples equal a device buffer's for every sampler;
``FrameStack``, ``compact_next`` and the checkpoint round trip work; bad settings raise."""

import jax
import numpy as np
import pytest
from test_compact import END, Episodes, assert_tree_equal
from test_compact import all_items as all_items_of

from rlbuf import checkpoint
from rlbuf.buffers.frame_stack import FrameStack
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers import RandomSampler, SamplerWithoutReplacement
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

SAMPLERS = {
    "random": lambda: RandomSampler(),
    "without": lambda: SamplerWithoutReplacement(),
    "slice": lambda: SliceSampler(slice_len=2, end_key=END, strict_length=False),
    "prioritized": lambda: PrioritizedSampler(max_capacity=16, alpha=0.7, beta=0.5),
}


def kinds(state):
    return {x.sharding.memory_kind for x in jax.tree_util.tree_leaves(state.storage)}


def host_and_device(sampler, frame_stack=None):
    mk = lambda **kw: ReplayBuffer(storage=LazyTensorStorage(16, ndim=2, **kw),  # noqa: E731
                                   sampler=SAMPLERS[sampler](), batch_size=4, frame_stack=frame_stack)
    return mk(memory_kind="pinned_host"), mk()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_samples_storage_stays_on_host(sampler):
    host, dev = host_and_device(sampler)
    sim = Episodes((2,), (1, 3), 0)
    first = sim.batch(1)
    sh, sd = host.init(first), dev.init(first)
    assert kinds(sh) == {"pinned_host"}
    add_h, add_d = jax.jit(host.add, donate_argnums=0), jax.jit(dev.add, donate_argnums=0)
    sam_h, sam_d = jax.jit(host.sample, donate_argnums=0), jax.jit(dev.sample, donate_argnums=0)
    for i, t in enumerate((5, 3, 11, 3)):
        data = sim.batch(t)
        sh, sd = add_h(sh, data), add_d(sd, data)
        assert kinds(sh) == {"pinned_host"}
        sh, bh, ih = sam_h(sh, jax.random.key(i))
        sd, bd, idd = sam_d(sd, jax.random.key(i))
        assert kinds(sh) == {"pinned_host"}
        assert {x.sharding.memory_kind for x in jax.tree_util.tree_leaves(bh)} == {"device"}
        assert_tree_equal(bh, bd)
        np.testing.assert_array_equal(ih["mask"], idd["mask"])
    assert add_h._cache_size() == 3  # one executable per batch shape (T = 5, 3, 11)


def test_frame_stack_and_checkpoint(tmp_path):
    host, dev = host_and_device("slice", FrameStack(3, keys=("observation", "pixels")))
    sim = Episodes((2,), (2, 5), 1)
    first = sim.batch(1)
    sh, sd = host.init(first), dev.init(first)
    for t in (5, 11):
        data = sim.batch(t)
        sh, sd = host.add(sh, data), dev.add(sd, data)
    _, bh, _ = jax.jit(host.sample)(sh, jax.random.key(0))
    _, bd, _ = jax.jit(dev.sample)(sd, jax.random.key(0))
    assert_tree_equal(bh, bd)
    checkpoint.save(tmp_path / "ck", sh)
    back = checkpoint.restore(tmp_path / "ck", host.init(first))
    assert kinds(back) == {"pinned_host"}
    assert_tree_equal(back, sh)


def test_errors():
    with pytest.raises(ValueError, match="memory_kind"):
        LazyTensorStorage(8, memory_kind="device_host")


@pytest.mark.parametrize("sampler", ("random", "slice"))
def test_compact_next_on_host(sampler, tmp_path):
    """``compact_next`` in host memory: its frames and table rows stay there through jitted,
    donated adds and samples (bookkeeping on the device); every sample equals the device
    compact buffer's (episodes crossing adds, a ``reset_at_each_iter`` cut, wrap-arounds, a
    small table that overflows: lost items are redrawn the same way on host and device); every
    stored item equals the plain buffer's; checkpoint."""
    fs = FrameStack(2, keys=("pixels",))
    mk = lambda **kw: ReplayBuffer(storage=LazyTensorStorage(16, ndim=2, **kw),  # noqa: E731
                                   sampler=SAMPLERS[sampler](), batch_size=4, frame_stack=fs)
    host, comp, plain = mk(compact_next=True, memory_kind="pinned_host", final_obs_size=4), \
        mk(compact_next=True, final_obs_size=4), mk()
    sim = Episodes((2,), (1, 3), 2)
    first = sim.batch(1)
    sh, sc, sp = host.init(first), comp.init(first), plain.init(first)
    data_kinds = lambda st: {x.sharding.memory_kind for x in jax.tree_util.tree_leaves(st.storage.data)}  # noqa: E731
    assert data_kinds(sh) == {"pinned_host"}
    add_h, sam_h = jax.jit(host.add, donate_argnums=0), jax.jit(host.sample, donate_argnums=0)
    for i, (t, reset) in enumerate(((5, False), (3, True), (11, False), (3, False))):
        data = sim.batch(t, reset=reset)
        sh, sc, sp = add_h(sh, data), comp.add(sc, data), plain.add(sp, data)
        assert data_kinds(sh) == {"pinned_host"}
        sh, bh, ih = sam_h(sh, jax.random.key(i))
        sc, bc, ic = jax.jit(comp.sample)(sc, jax.random.key(i))
        assert {x.sharding.memory_kind for x in jax.tree_util.tree_leaves(bh)} == {"device"}
        assert_tree_equal(bh, bc)  # host == device compact (same redraws)
        assert_tree_equal(ih, ic)
    assert int(sh.storage.lost) > 0
    (idx, written), (idx_h, _) = all_items_of(sp), all_items_of(sh)
    ref = plain.storage.gather(sp.layout, sp.storage, idx)
    got = host.storage.gather(sh.layout, sh.storage, idx_h)
    ok = np.asarray(host.storage.valid(sh.layout, sh.storage, idx_h)) & written
    assert_tree_equal(got, ref, ok)
    checkpoint.save(tmp_path / "ck", sh)
    back = checkpoint.restore(tmp_path / "ck", host.init(first))
    assert data_kinds(back) == {"pinned_host"}
    assert_tree_equal(back, sh)
