"""MaxValueWriter against TorchRL's TensorDictMaxValueWriter: the same stream of batches (items
``[N, T]`` whose rank key has a per-step dim, reduced with each ``reduction``) leaves the same
set of items stored (distinct ranks: TorchRL's heap and rlbuf's top-k then agree)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torchrl")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import LazyTensorStorage as TLazyTensorStorage  # noqa: E402
from torchrl.data import TensorDictMaxValueWriter, TensorDictReplayBuffer  # noqa: E402

from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402
from rlbuf.writers import MaxValueWriter  # noqa: E402

CAP, T = 6, 4


@pytest.mark.parametrize("reduction", ["max", "min", "mean", "median", "sum"])
def test_same_items_kept(reduction):
    rng = np.random.default_rng(0)
    trb = TensorDictReplayBuffer(storage=TLazyTensorStorage(CAP), batch_size=2,
                                 writer=TensorDictMaxValueWriter(rank_key="score", reduction=reduction))
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), batch_size=2,
                      writer=MaxValueWriter(rank_key="score", reduction=reduction))
    add = jax.jit(rb.add)
    state = rb.init({"id": jnp.zeros((1,), jnp.int32), "score": jnp.zeros((1, T), jnp.float32)})
    next_id = 0
    for n in (4, 3, 5, 1, 6, 2):
        ids = np.arange(next_id, next_id + n, dtype=np.int32)
        next_id += n
        score = rng.normal(size=(n, T)).astype(np.float32)
        trb.extend(TensorDict({"id": torch.from_numpy(ids), "score": torch.from_numpy(score)}, batch_size=[n]))
        state = add(state, {"id": jnp.asarray(ids), "score": jnp.asarray(score)})
        theirs = sorted(trb.storage[: len(trb)]["id"].tolist())
        ours = sorted(np.asarray(state.storage["id"])[: int(state.count)].tolist())
        assert ours == theirs
