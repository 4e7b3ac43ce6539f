"""``PerWorkerReplayBuffer`` in-process (it needs no extra devices): every worker's sub-buffer
behaves exactly as a plain buffer fed the same batches, the samplers' data-dependent branches
stay branches in the traced program (no ``vmap``-made ``select`` running the O(capacity) side
every call), and priorities reach only the owning worker. The sharded form on 4 devices is in
``tests/multidevice``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.sharding import PerWorkerReplayBuffer
from rlbuf.storage import LazyTensorStorage

W, LANES, CAP, T = 2, 2, 12, 5
SAMPLERS = {
    "random": lambda: RandomSampler(),
    "without_replacement": lambda: SamplerWithoutReplacement(),
    "slice": lambda: SliceSampler(num_slices=4, traj_key="ep"),
    "slice_without_replacement": lambda: SliceSamplerWithoutReplacement(slice_len=2, traj_key="ep"),
    "prioritized": lambda: PrioritizedSampler(W * LANES * CAP, 0.7, 0.5),
    "prioritized_slice": lambda: PrioritizedSliceSampler(W * LANES * CAP, 0.7, 0.5, slice_len=2, traj_key="ep"),
}


def _batch(start, worker):
    """Episodes of 3 steps; ``id`` encodes (worker, lane, step)."""
    step = start + np.arange(T)
    ids = 10_000 * worker + 1000 * np.arange(LANES)[:, None] + step[None, :]
    return {"id": jnp.asarray(ids, jnp.int32), "ep": jnp.asarray(np.broadcast_to(step // 3, (LANES, T)), jnp.int32)}


_FNS: dict = {}


def fns(name):
    if name not in _FNS:
        prb = PerWorkerReplayBuffer(
            ReplayBuffer(storage=LazyTensorStorage(W * LANES * CAP, ndim=2), sampler=SAMPLERS[name](), batch_size=8), W
        )
        _FNS[name] = (prb, jax.jit(prb.add_worker), jax.jit(prb.sample), jax.jit(prb.local_buffer.add),
                      jax.jit(prb.local_buffer.sample))
    return _FNS[name]


def _primitives(jaxpr, out=None):
    """Names of every primitive in ``jaxpr`` and its sub-jaxprs (loop and branch bodies)."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        out.append(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _primitives(inner, out)
    return out


def _branches(fn, *args):
    prims = _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
    return prims.count("while") + prims.count("cond")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_branches_survive_per_worker(name):
    """The traced per-worker ``sample``, ``can_sample`` and ``add`` have as many loops and
    conditionals as one plain sub-buffer's: none was turned into a both-sides ``select``."""
    prb, *_ = fns(name)
    local = prb.local_buffer
    state = prb.init(_batch(0, 0))
    one = jax.tree_util.tree_map(lambda x: x[0], state)
    key = jax.random.key(0)
    assert _branches(prb.sample, state, key) == _branches(local.sample, one, key)
    assert _branches(prb.can_sample, state) == _branches(local.can_sample, one)
    both = jax.tree_util.tree_map(lambda *x: jnp.stack(x), _batch(0, 0), _batch(0, 1))
    assert _branches(prb.add, state, both) == _branches(local.add, one, _batch(0, 0))
    if name in ("slice", "without_replacement", "slice_without_replacement", "prioritized_slice"):
        assert _branches(local.sample, one, key) >= 1  # the O(capacity) path is behind a branch


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_worker_is_a_plain_buffer(name):
    """Workers fed unequal numbers of batches (through the ring's wrap-around) sample exactly what
    a plain buffer fed the same batches samples with the key ``fold_in(key, w)``."""
    prb, add_worker, sample, plain_add, plain_sample = fns(name)
    local = prb.local_buffer
    state = prb.init(_batch(0, 0))
    plains = [local.init(_batch(0, w)) for w in range(W)]
    feeds = [0, 0, 1, 0, 0, 1, 0]  # worker 0: 5 batches (wraps the 12-step ring), worker 1: 2
    starts = [0] * W
    for i, w in enumerate(feeds):
        b = _batch(starts[w], w)
        starts[w] += T
        state = add_worker(state, w, b)
        plains[w] = plain_add(plains[w], b)
        if i in (2, len(feeds) - 1):
            key = jax.random.key(i)
            state, batch, info = sample(state, key)
            for v in range(W):
                plains[v], want, winfo = plain_sample(plains[v], jax.random.fold_in(key, v))
                half = want["id"].shape[0]  # items (or slices) per worker
                got = jax.tree_util.tree_map(lambda x, v=v: x[v * half:(v + 1) * half], batch)
                np.testing.assert_array_equal(got["id"], want["id"])
                np.testing.assert_array_equal(np.asarray(info["mask"])[v * half:(v + 1) * half], winfo["mask"])
                idx = winfo["index"] if isinstance(winfo["index"], tuple) else (winfo["index"],)
                for a, b_ in zip(info["index"][1:], idx):
                    np.testing.assert_array_equal(np.asarray(a)[v * half:(v + 1) * half], b_)
            assert np.all(np.asarray(info["index"][0]).reshape(W, -1) == np.arange(W)[:, None])
    for v in range(W):  # the sub-buffers' whole states agree too
        for a, b_ in zip(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, v=v: x[v], state)),
                         jax.tree_util.tree_leaves(plains[v])):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("name", ["prioritized", "prioritized_slice"])
def test_update_priority_reaches_only_the_owning_worker(name):
    prb, add_worker, sample, *_ = fns(name)
    state = prb.init(_batch(0, 0))
    for w in range(W):
        state = add_worker(state, w, _batch(0, w))
    state, batch, info = sample(state, jax.random.key(0))
    prio = jnp.where(jnp.asarray(info["index"][0]) == 0, 5.0, 0.25)
    new = jax.jit(prb.update_priority)(state, info["index"], prio)
    for v in range(W):
        local = prb.local_buffer
        one = jax.tree_util.tree_map(lambda x, v=v: x[v], state)
        owned = np.asarray(info["index"][0]) == v
        idx = tuple(np.asarray(i)[owned] for i in info["index"][1:])
        want = local.update_priority(one, idx, np.asarray(prio)[owned])
        got = jax.tree_util.tree_map(lambda x, v=v: x[v], new)
        # (the tree's scratch is working memory: its content carries no meaning)
        pick = lambda s: (s.tree.sums, s.tree.mins, s.max_priority, getattr(s, "prio", ()))  # noqa: E731
        for a, b_ in zip(jax.tree_util.tree_leaves(pick(got.sampler)), jax.tree_util.tree_leaves(pick(want.sampler))):
            np.testing.assert_allclose(a, b_)
