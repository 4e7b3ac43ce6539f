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
