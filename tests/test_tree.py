"""Input validation at the buffer's entry points (``rlbuf._tree``): every bad input of issue 12
is either accepted with TorchRL's meaning or refused naming the key, never a JAX internal error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf import _tree
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.storages import LazyTensorStorage

RB = ReplayBuffer(storage=LazyTensorStorage(16), batch_size=4)
RB2 = ReplayBuffer(storage=LazyTensorStorage(16, ndim=2), batch_size=4)
ADD = jax.jit(RB.add)


def test_eager_init_from_numpy_canonicalizes_dtypes_like_eval_shape():
    """float64/int64 numpy examples give the layout jax.eval_shape gives (float32/int32 without
    x64), so the jitted add of jax arrays is accepted and the stored data are right."""
    example = {"obs": np.zeros((2, 3)), "act": np.zeros((2,), np.int64), "done": np.zeros((2,), bool)}
    state = RB.init(example)
    abstract = jax.eval_shape(RB.init, example)
    assert state.layout == abstract.layout
    assert state.storage["obs"].dtype == jnp.float32 and state.storage["act"].dtype == jnp.int32
    data = {"obs": jnp.ones((2, 3)), "act": jnp.array([4, 5], jnp.int32), "done": jnp.array([True, False])}
    state = ADD(state, data)
    state = RB.add(state, {"obs": np.full((1, 3), 2.0), "act": np.array([6]), "done": np.array([True])})  # eager
    np.testing.assert_array_equal(np.asarray(state.storage["act"][:3]), [4, 5, 6])
    np.testing.assert_array_equal(np.asarray(state.storage["obs"][2]), [2.0] * 3)


def test_python_scalar_leaves_are_named():
    state = RB.init({"obs": jnp.zeros((2,)), "r": jnp.zeros((2,))})
    with pytest.raises(ValueError, match=r"key 'r' has shape \(\), expected \[T\]"):
        RB.add(state, {"obs": jnp.zeros((2,)), "r": 1.0})
    with pytest.raises(ValueError, match=r"leaf 'r' has shape \(\), fewer than ndim=1"):
        RB.init({"obs": jnp.zeros((2,)), "r": 1.0})


def test_typed_prng_key_leaf_is_refused_clearly():
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(TypeError, match=r"key 'k' holds typed PRNG keys.*key_data"):
        RB.init({"obs": jnp.zeros((2,)), "k": keys})
    state = RB.init({"obs": jnp.zeros((2,)), "k": jax.random.key_data(keys)})  # the documented way
    state = RB.add(state, {"obs": jnp.zeros((2,)), "k": jax.random.key_data(keys)})
    with pytest.raises(TypeError, match=r"key 'k' holds typed PRNG keys"):
        RB.add(state, {"obs": jnp.zeros((2,)), "k": keys})


def test_lane_dim_of_size_zero_is_refused():
    with pytest.raises(ValueError, match=r"leaf 'obs' has lane dims \(0,\); a lane dim of size 0"):
        RB2.init({"obs": jnp.zeros((0, 3))})


def test_tuple_keys_are_nesting_everywhere():
    """TorchRL users write td["next", "obs"]: tuple keys, alone or mixed with strings and
    nested dicts, mean nesting at init and at add (eager and inside jit)."""
    mixed = {"obs": jnp.zeros((2,)), ("next", "obs"): jnp.zeros((2,)), ("next", "reward"): jnp.zeros((2,))}
    state = RB.init(mixed)
    assert sorted(state.layout.keys()) == [("next", "obs"), ("next", "reward"), ("obs",)]
    nested = {"obs": jnp.ones((2,)), "next": {"obs": jnp.full((2,), 2.0), "reward": jnp.full((2,), 3.0)}}
    state = ADD(state, nested)
    state = RB.add(state, {"obs": jnp.ones((1,)), ("next", "obs"): jnp.ones((1,)), "next": {"reward": jnp.ones((1,))}})
    flat = jax.jit(lambda s, a, b, c: RB.add(s, {"obs": a, ("next", "obs"): b, ("next", "reward"): c}))
    state = flat(state, jnp.ones((1,)), jnp.full((1,), 5.0), jnp.ones((1,)))
    np.testing.assert_array_equal(np.asarray(state.storage["next"]["obs"][:4]), [2, 2, 1, 5])
    # a buffer built from a flat tuple-keyed dict takes nested data (and vice versa)
    state = RB.init({("next", "obs"): jnp.zeros((2,))})
    state = RB.add(state, {"next": {"obs": jnp.ones((2,))}})
    assert int(state.count) == 2


def test_conflicting_tuple_keys_are_named():
    with pytest.raises(ValueError, match=r"key \('next', 'obs'\) is given twice"):
        RB.init({("next", "obs"): jnp.zeros((2,)), "next": {"obs": jnp.zeros((2,))}})
    with pytest.raises(ValueError, match=r"key 'next' is both a leaf and a dict"):
        RB.init({"next": jnp.zeros((2,)), ("next", "obs"): jnp.zeros((2,))})
    with pytest.raises(TypeError, match="non-empty tuple of strings"):
        RB.init({(): jnp.zeros((2,))})


def test_list_leaves_are_arrays():
    """A list is one array (not a pytree of scalars whose paths look like ('act', 0, 0))."""
    state = RB.init({"obs": jnp.zeros((2,)), "act": [0, 1]})
    assert state.layout.spec("act") == ((), np.dtype(np.int32))
    state = RB.add(state, {"obs": jnp.zeros((2,)), "act": [3, 4]})
    np.testing.assert_array_equal(np.asarray(state.storage["act"][:2]), [3, 4])
    with pytest.raises(TypeError, match=r"key 'act' has dtype float32, the buffer stores int32"):
        RB.add(state, {"obs": jnp.zeros((2,)), "act": [0.5, 1.5]})


def test_sample_with_a_batch_size_instead_of_a_key():
    state = RB.add(RB.init({"obs": jnp.zeros((2,))}), {"obs": jnp.zeros((2,))})
    with pytest.raises(TypeError, match=r"got 32 \(batch_size is fixed at construction"):
        RB.sample(state, 32)
    with pytest.raises(TypeError, match="must be a PRNG key"):
        RB.sample(state, jnp.zeros((2,), jnp.int32))
    RB.sample(state, jax.random.PRNGKey(0))  # raw uint32 keys stay accepted
    RB.sample(state, jax.random.key(0))


def test_non_array_leaf_is_named():
    with pytest.raises(TypeError, match=r"key 'obs' is str, not an array"):
        RB.init({"obs": "abc"})


def test_nest_leaves_other_trees_alone():
    assert _tree.nest([1, 2]) == [1, 2]
    out = _tree.nest({"a": {"b": 1}, ("a", "c"): 2, "d": (3, 4)})
    assert out == {"a": {"b": 1, "c": 2}, "d": (3, 4)}
