"""split_trajectories against a plain-Python reference, eagerly and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from rlbuf.collectors import split_trajectories


def reference(ids, values):
    """Order of first appearance in the row-major flattening; zero padding."""
    flat_ids, flat_v = ids.ravel(), values.reshape((ids.size,) + values.shape[ids.ndim:])
    order = list(dict.fromkeys(flat_ids.tolist()))
    groups = [flat_v[flat_ids == i] for i in order]
    n, L = len(groups), max(len(g) for g in groups)
    out = np.zeros((n, L) + flat_v.shape[1:], flat_v.dtype)
    mask = np.zeros((n, L), bool)
    for k, g in enumerate(groups):
        out[k, : len(g)] = g
        mask[k, : len(g)] = True
    return out, mask


def _batch(ids):
    ids = np.asarray(ids, np.int32)
    v = np.arange(ids.size * 2, dtype=np.float32).reshape(ids.shape + (2,)) + 1
    return {"obs": v, "next": {"r": v[..., 0]}, "collector": {"traj_ids": ids}}


# compiled once for every example: the static bounds are the same
_jit_split = jax.jit(lambda b: split_trajectories(b, max_trajectories=12, max_length=12))


@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(st.lists(st.lists(st.integers(0, 4), min_size=6, max_size=6), min_size=2, max_size=2))
def test_matches_reference(rows):
    ids = np.asarray(rows, np.int32)
    b = _batch(ids)
    want, mask = reference(ids, b["obs"])
    out = split_trajectories(b)
    np.testing.assert_array_equal(out["obs"], want)
    np.testing.assert_array_equal(out["next"]["r"], want[..., 0])
    np.testing.assert_array_equal(out["collector"]["mask"], mask)
    np.testing.assert_array_equal(out["collector"]["traj_ids"], reference(ids, ids)[0])
    outj = _jit_split(jax.tree.map(jnp.asarray, b))  # padded to the static bounds
    n, L = mask.shape
    np.testing.assert_array_equal(outj["obs"][:n, :L], want)
    np.testing.assert_array_equal(outj["collector"]["mask"][:n, :L], mask)
    assert not outj["collector"]["mask"][n:].any() and not outj["collector"]["mask"][:, L:].any()
    assert (outj["obs"][n:] == 0).all()


def test_torchrl_example_order():
    ids = np.array([[3, 3, 5, 5], [4, 4, 4, 6]])
    out = split_trajectories(_batch(ids))
    np.testing.assert_array_equal(out["collector"]["traj_ids"][:, 0], [3, 5, 4, 6])
    assert out["collector"]["mask"].sum(1).tolist() == [2, 2, 3, 1]


def test_needs_bounds_under_jit():
    with pytest.raises(ValueError, match="max_trajectories"):
        jax.jit(split_trajectories)(_batch(np.zeros((2, 3))))


def reference_ids_from_done(done):
    """Row by row over the flattened leading dims: a new id after each done step and at each row."""
    rows = done.reshape(-1, done.shape[-1])
    out, nxt = np.zeros(rows.shape, np.int64), 0
    for r, row in enumerate(rows):
        for t, d in enumerate(row):
            out[r, t] = nxt
            nxt += bool(d) and t < len(row) - 1
        nxt += 1
    return out.reshape(done.shape)


_jit_done_split = jax.jit(lambda b: split_trajectories(b, max_trajectories=24, max_length=24))


@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(st.lists(st.booleans(), min_size=24, max_size=24), st.sampled_from([(24,), (4, 6), (2, 3, 4)]))
def test_split_by_done_flags(flags, shape):
    """No trajectory ids: they are rebuilt from ("next","done") (any number of batch dims),
    written to "traj_ids", and the mask goes to "mask" (TorchRL's keys without a "collector").
    Under jit (one compilation per shape); the eager path is the same function with exact bounds."""
    done = np.asarray(flags).reshape(shape)
    v = np.arange(done.size, dtype=np.float32).reshape(shape)
    ids = reference_ids_from_done(done)
    want, mask = reference(ids, v)
    out = _jit_done_split({"obs": jnp.asarray(v), "next": {"done": jnp.asarray(done)}})
    n, L = mask.shape
    np.testing.assert_array_equal(out["obs"][:n, :L], want)
    np.testing.assert_array_equal(out["mask"][:n, :L], mask)
    assert out["mask"].sum() == mask.sum()
    np.testing.assert_array_equal(out["traj_ids"][:n, :L], reference(ids, ids)[0])


def test_split_by_done_flags_eagerly():
    done = np.array([[[0, 1, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 1]]], bool)
    ids = reference_ids_from_done(done)
    np.testing.assert_array_equal(ids.reshape(4, 3), [[0, 0, 1], [2, 2, 2], [3, 4, 5], [6, 6, 6]])
    out = split_trajectories({"obs": done.astype(np.int32), "next": {"done": done}})
    np.testing.assert_array_equal(out["mask"].sum(1), [2, 1, 3, 1, 1, 1, 3])
    np.testing.assert_array_equal(out["traj_ids"][:, 0], np.arange(7))


def test_key_resolution():
    ids = np.array([[0, 0, 1], [2, 2, 2]], np.int32)
    b = _batch(ids)
    b["t"] = b.pop("collector")["traj_ids"]
    out = split_trajectories(b, trajectory_key="t")
    assert out["mask"].sum() == 6 and "collector" not in out
    b2 = {"obs": b["obs"], "x": {"traj_ids": ids}}
    np.testing.assert_array_equal(split_trajectories(b2, prefix="x")["x"]["mask"], [[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    with pytest.raises(KeyError, match=r"neither trajectory ids at \('collector', 'traj_ids'\) nor done flags"):
        split_trajectories({"obs": b["obs"], "collector": {}})
    with pytest.raises(ValueError, match=r"done flags \('next', 'done'\) must be bool"):
        split_trajectories({"obs": b["obs"], "next": {"done": ids}})
    with pytest.raises(ValueError, match=r"leaf 'obs' of shape"):
        split_trajectories({"obs": b["obs"][:1], "traj_ids": ids})
