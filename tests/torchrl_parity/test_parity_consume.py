"""``consume_after_n_samples`` against TorchRL's (``ReplayBuffer(consume_after_n_samples=n)``, its
``ConsumingSampler``): from the same stored items, drawing until nothing is left, both sides
return each item exactly ``n`` times, distinct within a batch, batches of ``min(batch_size,
live)`` items, and report the same ``len`` after every batch when ``n = 1`` (where it is
determined). Writes are not compared: TorchRL reuses consumed slots first, rlbuf keeps its
ring order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torchrl")

import torch  # noqa: E402
from torchrl.data import LazyTensorStorage as TLazyTensorStorage  # noqa: E402
from torchrl.data import ReplayBuffer as TReplayBuffer  # noqa: E402

from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.samplers.random import RandomSampler  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

N, B = 10, 4


def _torchrl(n):
    torch.manual_seed(0)
    rb = TReplayBuffer(storage=TLazyTensorStorage(N), batch_size=B, consume_after_n_samples=n)
    rb.extend(torch.arange(N))
    lens, got = [], []
    while True:
        try:
            x = rb.sample().numpy()
        except RuntimeError:
            break
        got.append(x)
        lens.append(len(rb))
    return lens, got


def _rlbuf(n):
    rb = ReplayBuffer(storage=LazyTensorStorage(N), batch_size=B, sampler=RandomSampler(consume_after_n_samples=n))
    state = rb.add(rb.init({"id": jnp.zeros(1, jnp.int32)}), {"id": jnp.arange(N, dtype=jnp.int32)})
    sample = jax.jit(rb.sample)
    lens, got, k = [], [], 0
    while bool(rb.can_sample(state)):
        state, out, info = sample(state, jax.random.key(k))
        k += 1
        got.append(np.asarray(out["id"])[np.asarray(info["mask"])])
        lens.append(len(state))
    return lens, got


@pytest.mark.parametrize("n", [1, 3])
def test_consume_counts_as_torchrl(n):
    for lens, got in (_torchrl(n), _rlbuf(n)):
        assert all(len(set(g.tolist())) == len(g) for g in got)
        np.testing.assert_array_equal(np.bincount(np.concatenate(got), minlength=N), np.full(N, n))
        assert lens[-1] == 0
    t_lens, t_got = _torchrl(n)
    r_lens, r_got = _rlbuf(n)
    if n == 1:
        assert r_lens == t_lens == [6, 2, 0]
        assert [len(g) for g in r_got] == [len(g) for g in t_got] == [4, 4, 2]
