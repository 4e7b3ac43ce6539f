"""split_trajectories against TorchRL's on the same data: trajectory ids (collector layout,
``prefix``, ``trajectory_key``) and ids rebuilt from done flags (``done_key``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torchrl")

from td_convert import assert_same, from_td, to_td  # noqa: E402
from torchrl.collectors.utils import split_trajectories as torchrl_split  # noqa: E402

from rlbuf.collectors import split_trajectories  # noqa: E402


def collector_batch(rng, shape, p_done=0.3):
    """A ``[*B, T]`` batch laid out as a collector emits it: unique contiguous ids per row."""
    done = rng.random(shape) < p_done
    rows = done.reshape(-1, shape[-1])
    ids = np.zeros(rows.shape, np.int32)
    nxt = rows.shape[0]  # row r starts with id r, later ids from one counter (TorchRL's rule)
    for r in range(rows.shape[0]):
        cur = r
        for t in range(rows.shape[1]):
            ids[r, t] = cur
            if rows[r, t]:
                cur, nxt = nxt, nxt + 1
    step = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return {
        "observation": np.stack([step, -step], -1),
        "action": (step % 3).astype(np.int64),
        "next": {"observation": np.stack([step + 1, -step - 1], -1), "done": done,
                 "reward": step * 0.5},
        "collector": {"traj_ids": ids.reshape(shape)},
    }


def _ours(batch, **kw):
    return split_trajectories(batch, **kw)


def _theirs(batch, ndim, **kw):
    return from_td(torchrl_split(to_td(batch, ndim), **kw))


@pytest.mark.parametrize("kw", [{}, {"prefix": "collector"}, {"trajectory_key": ("collector", "traj_ids")}])
@pytest.mark.parametrize("shape", [(12,), (3, 8)])
def test_trajectory_ids(kw, shape):
    batch = collector_batch(np.random.default_rng(sum(shape)), shape)
    assert_same(_ours(batch, **kw), _theirs(batch, len(shape), **kw))


def test_all_full_length_rows():
    # TorchRL returns the batch unchanged (a [1, T] view for [T]); so does the general rule.
    batch = collector_batch(np.random.default_rng(0), (3, 5), p_done=0.0)
    assert_same(_ours(batch), _theirs(batch, 2))
    one = collector_batch(np.random.default_rng(0), (5,), p_done=0.0)
    assert_same(_ours(one), _theirs(one, 1))


def test_custom_trajectory_key_puts_the_mask_next_to_it():
    batch = collector_batch(np.random.default_rng(1), (2, 6))
    batch["ids"] = batch.pop("collector")["traj_ids"]
    out = _ours(batch, trajectory_key="ids")
    assert "mask" in out and "collector" not in out
    assert_same(out, _theirs(batch, 2, trajectory_key="ids"))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(1,), (7,), (1, 5), (3, 4), (2, 1)]),
       p=st.sampled_from([0.0, 0.3, 1.0]))
def test_ids_from_done_flags(seed, shape, p):
    """No trajectory ids: both rebuild them from ("next","done") and write "traj_ids"/"mask"."""
    batch = collector_batch(np.random.default_rng(seed), shape, p)
    del batch["collector"]
    out = _ours(batch)
    assert_same(out, _theirs(batch, len(shape)))
    assert "traj_ids" in out and "mask" in out


def test_done_key_and_prefix():
    batch = collector_batch(np.random.default_rng(2), (2, 6))
    del batch["collector"]
    batch["next"]["end"] = batch["next"].pop("done")
    assert_same(_ours(batch, done_key="end"), _theirs(batch, 2, done_key="end"))
    # a full ("next", ...) key is accepted too (TorchRL would look for ("next", "next", "end"))
    assert_same(_ours(batch, done_key=("next", "end")), _theirs(batch, 2, done_key="end"))
    assert_same(_ours(batch, prefix="collector", done_key="end"),
                _theirs(batch, 2, prefix="collector", done_key="end"))
