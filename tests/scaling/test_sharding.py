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

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.scaling.sharding import PerWorkerReplayBuffer
from rlbuf.storages import LazyTensorStorage

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


# ---------------------------------------------------------------- TorchRL-style tuple keys
def _tuple_keyed(nested: dict) -> dict:
    """``{"a": x, "next": {"b": y}}`` -> ``{"a": x, ("next", "b"): y}`` (TorchRL's ``td["next", "b"]``)."""
    out = {}
    for k, v in nested.items():
        if isinstance(v, dict):
            out.update({(k, *((kk,) if isinstance(kk, str) else kk)): vv for kk, vv in _tuple_keyed(v).items()})
        else:
            out[k] = v
    return out


def _nested_batch(lead, start):
    """A batch ``[*lead, T]`` with a ``next`` sub-dict; ``id`` numbers every step."""
    n = int(np.prod(lead)) * T
    ids = (start + np.arange(n, dtype=np.int32)).reshape(*lead, T)
    return {"id": ids, "next": {"obs": ids.astype(np.float32) + 0.5, "done": ids % 3 == 2}}


def _assert_same(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def test_per_worker_accepts_tuple_keys():
    """``PerWorkerReplayBuffer`` takes ``{("next", "obs"): x}`` as nesting (as ``ReplayBuffer``
    does) in ``init``, ``add_worker`` and ``add``, flat or mixed with nested dicts: the state and
    samples equal those of the same batches written nested; ``keys=`` selects after nesting."""
    rb = ReplayBuffer(storage=LazyTensorStorage(W * LANES * CAP, ndim=2), sampler=RandomSampler(), batch_size=4)
    for prb in (PerWorkerReplayBuffer(rb, W),
                PerWorkerReplayBuffer(ReplayBuffer(storage=rb.storage, batch_size=4, keys=["id", ("next", "obs")]), W)):
        one, both = _nested_batch((LANES,), 0), _nested_batch((W, LANES), 100)
        mixed = dict(_tuple_keyed(one), next={"done": one["next"]["done"]})
        del mixed[("next", "done")]
        want = prb.add(prb.add_worker(prb.init(one), 1, one), both)
        for example, b1, b2 in ((_tuple_keyed(one), _tuple_keyed(one), _tuple_keyed(both)), (mixed, mixed, both)):
            got = prb.add(prb.add_worker(prb.init(example), 1, b1), b2)
            _assert_same(got, want)
            _assert_same(prb.sample(got, jax.random.key(1))[1], prb.sample(want, jax.random.key(1))[1])
        if prb.buffer.keys is not None:
            assert sorted(want.storage) == ["id", "next"] and sorted(want.storage["next"]) == ["obs"]


def test_sharded_accepts_tuple_keys_and_names_conflicts():
    """``shard(rb, mesh)`` on the one in-process device: tuple-keyed ``init``/``add`` equal the
    nested ones; a key given both ways, or a missing worker axis, raises naming the key and the
    public method (the 4-device form is ``buffer_tuple_keys`` in ``tests/multidevice``)."""
    from jax.sharding import Mesh

    from rlbuf.scaling.sharding import shard

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    srb = shard(ReplayBuffer(storage=LazyTensorStorage(LANES * CAP, ndim=2), batch_size=4), mesh)
    b = _nested_batch((LANES,), 0)
    want = srb.add(srb.init(b), b)
    _assert_same(srb.add(srb.init(_tuple_keyed(b)), _tuple_keyed(b)), want)
    twice = dict(_tuple_keyed(b), next={"obs": b["next"]["obs"]})
    with pytest.raises(ValueError, match=r"ShardedReplayBuffer.add: key \('next', 'obs'\) is given twice"):
        srb.add(want, twice)
    with pytest.raises(ValueError, match=r"ShardedReplayBuffer.init: key \('next', 'obs'\) is given twice"):
        srb.init(twice)
    prb = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(W * LANES * CAP, ndim=2), batch_size=4), W)
    with pytest.raises(ValueError, match=r"PerWorkerReplayBuffer.add: key 'id' has shape \(3, 5\), expected a lead"):
        prb.add(prb.init(b), _tuple_keyed(_nested_batch((3,), 0)))


def test_distributed_helpers_accept_tuple_keys():
    """``distributed.global_batch``/``replicate`` (single process here) nest tuple keys like the
    buffers, so their output feeds ``srb.add`` and a learner unchanged."""
    from jax.sharding import Mesh

    from rlbuf.scaling import distributed as dist

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    b = _nested_batch((LANES,), 0)
    _assert_same(dist.global_batch(_tuple_keyed(b), mesh), b)
    _assert_same(dist.replicate(_tuple_keyed(b), mesh), b)


def test_every_grouped_method_checks_the_group_count():
    """A state of another group count (e.g. a 4-worker checkpoint restored for 2) is refused by
    every method, naming both counts (sample used to keep group 0 of each block silently)."""
    from jax.sharding import Mesh

    from rlbuf.scaling.sharding import shard

    rb = ReplayBuffer(storage=LazyTensorStorage(64, ndim=2), batch_size=8)
    one = {"x": jnp.zeros((4, 2), jnp.float32)}  # one worker's [B=4, T=2] batch
    s4 = PerWorkerReplayBuffer(rb, 4).init(one)
    pw2 = PerWorkerReplayBuffer(rb, 2)
    calls = {
        "sample": lambda b, s: b.sample(s, jax.random.key(0)),
        "can_sample": lambda b, s: b.can_sample(s),
        "num_stored": lambda b, s: b.num_stored(s),
        "update_priority": lambda b, s: b.update_priority(s, (jnp.zeros(8, jnp.int32),) * 3, jnp.ones(8)),
    }
    pw_calls = dict(calls, add=lambda b, s: b.add(s, {"x": jnp.zeros((2, 4, 2))}),
                    add_worker=lambda b, s: b.add_worker(s, 0, one))
    for name, call in pw_calls.items():
        with pytest.raises(ValueError, match=rf"PerWorkerReplayBuffer.{name}: the state has 4 groups .* but the "
                                             r"buffer has 2 workers"):
            call(pw2, s4)
    srb = shard(rb, Mesh(np.array(jax.devices()[:1]), ("data",)))  # one device: G = 1
    s2 = PerWorkerReplayBuffer(rb, 2).init(one)
    sh_calls = dict(calls, add=lambda b, s: b.add(s, {"x": jnp.zeros((4, 2))}), global_storage=lambda b, s:
                    b.global_storage(s))
    for name, call in sh_calls.items():
        with pytest.raises(ValueError, match=rf"ShardedReplayBuffer.{name}: the state has 2 groups .* but the mesh "
                                             r"has 1 devices along 'data'"):
            call(srb, s2)
    assert int(pw2.num_stored(PerWorkerReplayBuffer(rb, 2).init(one))) == 0  # the right count passes
