"""``rlbuf._eager.compiled_when_eager``: eager calls of the buffers' pure methods run as one
jitted program (the buffer static) and give what the method gives run op by op
(``jax.disable_jit``); traced calls run the method inline; calls it cannot key on (unhashable
object, non-array leaves, dicts mixing tuple and str keys) run the method itself."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlbuf
from rlbuf._eager import compiled_when_eager, is_traced
from rlbuf.buffers.replay_buffer import ReplayBuffer

LANES = {1: (), 2: (2,)}


def _batch(ndim, t, start):
    lead = (*LANES[ndim], t)
    ids = jnp.asarray(start + np.arange(int(np.prod(lead))).reshape(lead), jnp.int32)
    ep = ids // 5  # episodes of 5 steps (per lane: ids are lane-major)
    return {"obs": jnp.stack([ids, -ids], -1).astype(jnp.float32), "collector": {"traj_ids": ep},
            "next": {"done": ids % 5 == 4}}


def _buffers(ndim):
    cap = 10 * (2 if ndim == 2 else 1)
    traj = ("collector", "traj_ids")
    return {
        "random": ReplayBuffer(storage=rlbuf.LazyTensorStorage(cap, ndim=ndim), batch_size=6),
        "slice": ReplayBuffer(storage=rlbuf.LazyTensorStorage(cap, ndim=ndim),
                              sampler=rlbuf.SliceSampler(slice_len=3, traj_key=traj), batch_size=6),
        "prioritized": ReplayBuffer(storage=rlbuf.LazyTensorStorage(cap, ndim=ndim),
                                    sampler=rlbuf.PrioritizedSampler(max_capacity=cap, alpha=0.7, beta=0.5),
                                    batch_size=6),
    }


def _same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _run(rb, ndim, user_jit=False, steps=(7, 7)):  # the second add wraps the ring
    """add / sample / update_priority / can_sample / num_stored; every output. Eager calls (the
    decorated path), or ``user_jit``: each public method under the user's own ``jax.jit``,
    where the decorator traces the method inline."""
    jitted = {}

    def call(name, *a):
        if not user_jit:
            return getattr(rb, name)(*a)
        if name not in jitted:
            jitted[name] = jax.jit(getattr(rb, name))
        return jitted[name](*a)

    out = []
    state = rb.init(_batch(ndim, 1, 0))
    start = 0
    for i, t in enumerate(steps):
        state = call("add", state, _batch(ndim, t, start))
        start += t * (2 if ndim == 2 else 1)
        state, items, info = call("sample", state, jax.random.key(i))
        if isinstance(rb.sampler, rlbuf.PrioritizedSampler):
            state = call("update_priority", state, info["index"], items["obs"][..., 0] % 3 + 0.5)
        out += [state, items, info, call("can_sample", state), call("num_stored", state)]
    return out


@pytest.mark.parametrize("kind, ndim", [("random", 1), ("slice", 2), ("prioritized", 1)])
def test_eager_calls_equal_the_users_jit(kind, ndim):
    rb = _buffers(ndim)[kind]
    fast = _run(rb, ndim)
    _same(fast, _run(rb, ndim, user_jit=True))
    assert not any(is_traced(x) for x in fast)
    # the public methods are the decorated ones
    for name in ("_add", "_sample", "update_priority", "can_sample", "num_stored"):
        assert hasattr(getattr(ReplayBuffer, name), "jitted"), name


def test_eager_add_equals_the_op_by_op_method():
    """One case run primitive by primitive, the undecorated method (``__wrapped__``), as eager
    calls ran before."""
    rb = _buffers(1)["random"]
    state = rb.init(_batch(1, 1, 0))
    data = _batch(1, 7, 0)
    _same(rb.add(state, data), ReplayBuffer._add.__wrapped__(rb, state, rb.stored(data)))


def test_eager_calls_compile_once_per_buffer_and_shape():
    jitted = ReplayBuffer._add.jitted
    rb = _buffers(2)["slice"]
    state = rb.init(_batch(2, 1, 0))
    state = rb.add(state, _batch(2, 11, 0))  # time lengths no other test here adds
    before = jitted._cache_size()
    twin = dataclasses.replace(rb)  # an equal buffer: the same program
    for i in range(3):
        state = twin.add(state, _batch(2, 11, 30 * i))
    assert jitted._cache_size() == before
    state = rb.add(state, _batch(2, 13, 0))  # another time length: one more program
    assert jitted._cache_size() == before + 1


def test_eager_add_leaves_its_input_state_readable():
    rb = _buffers(1)["random"]
    s0 = rb.add(rb.init(_batch(1, 1, 0)), _batch(1, 4, 0))
    s1 = rb.add(s0, _batch(1, 4, 100))
    assert int(s0.count) == 4 and int(s1.count) == 8  # s0 not donated
    np.testing.assert_array_equal(np.asarray(s0.storage["obs"][:4, 0]), np.arange(4))


def test_traced_calls_run_inline():
    """Inside the user's jit the method is traced in place: no nested program of its own."""
    rb = _buffers(2)["slice"]
    state = rb.init(_batch(2, 1, 0))
    jaxpr = jax.make_jaxpr(rb.add)(state, _batch(2, 5, 0))
    names = [e.params.get("name") for e in jaxpr.eqns if e.primitive.name in ("pjit", "jit")]
    assert "_add" not in names and "add" not in names


def test_falls_back_where_it_cannot_key_the_call():
    class Unhashable:
        __hash__ = None

        def __call__(self, batch):
            return batch

    rb = ReplayBuffer(storage=rlbuf.LazyTensorStorage(8), batch_size=4, transform=Unhashable())
    state = rb.add(rb.init(_batch(1, 1, 0)), _batch(1, 5, 0))
    _, items, _ = rb.sample(state, jax.random.key(0))
    assert items["obs"].shape == (4, 2)
    # TorchRL-style tuple keys mixed with nesting: normalized before the jitted call
    mixed = {"obs": jnp.ones((3, 2)), ("next", "done"): jnp.zeros(3, bool),
             "collector": {"traj_ids": jnp.zeros(3, jnp.int32)}}
    rb2 = ReplayBuffer(storage=rlbuf.LazyTensorStorage(8), batch_size=2)
    s2 = rb2.add(rb2.init(mixed), mixed)
    assert int(s2.count) == 3 and bool(s2.storage["next"]["done"][:3].any()) is False


def test_decorator_on_a_plain_class():
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Scale:
        k: float

        @compiled_when_eager
        def apply(self, x, unit=1.0):
            calls.append(is_traced(x))
            return x * self.k * (1.0 if isinstance(unit, str) else unit)

    s = Scale(3.0)
    np.testing.assert_allclose(np.asarray(s.apply(jnp.arange(3.0))), [0, 3, 6])
    s.apply(jnp.arange(3.0) + 1)  # same shapes: no new trace
    assert calls == [True]  # traced once, by the jitted program
    assert float(s.apply(2.0)) == 6.0 and calls[-1] is True  # a Python number goes through jit too
    np.testing.assert_allclose(np.asarray(s.apply(jnp.ones(2), "m")), [3, 3])  # a str leaf: run as is
    assert calls[-1] is False
    out = jax.vmap(s.apply)(jnp.ones((2, 3)))  # traced: inline
    assert out.shape == (2, 3) and calls[-1] is True
    assert Scale.apply.__doc__ is None and Scale.apply.__name__ == "apply"
