"""``StalenessAwareSampler`` against TorchRL's (``torchrl.data.replay_buffers.samplers``): the same
stored items and versions, the same consumer version and ``max_staleness`` give the same
support (the window) and the same distribution (each side's per-item counts against the
exact ``w(s) / sum w``, and the two sides against each other), with the default weight and a
custom one. TorchRL draws with replacement when the batch is larger than the eligible items
(``torch.multinomial(..., replacement=batch_size > n_valid)``), which the test uses so that
both sides draw i.i.d."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

pytest.importorskip("torchrl")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import LazyTensorStorage as TLazyTensorStorage  # noqa: E402
from torchrl.data import TensorDictReplayBuffer  # noqa: E402
from torchrl.data.replay_buffers.samplers import StalenessAwareSampler as TStaleness  # noqa: E402

from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.samplers.staleness import StalenessAwareSampler, set_policy_version  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

CAP, STEP, N_ADDS, CURRENT, DRAW = 12, 3, 5, 5, 6000


def _square(s):
    return 1.0 / (s + 1.0) ** 2


def _ids_versions():
    ids = np.arange(STEP * N_ADDS, dtype=np.int64)
    return ids, ids // STEP  # adds of 3 steps at versions 0..4; the ring keeps the last 12


@pytest.mark.parametrize("max_staleness,weight", [(3, None), (None, _square)], ids=["window", "custom_weight"])
def test_same_distribution_as_torchrl(max_staleness, weight):
    ids, versions = _ids_versions()
    torch.manual_seed(0)
    trb = TensorDictReplayBuffer(
        storage=TLazyTensorStorage(CAP),
        sampler=TStaleness(max_staleness=-1 if max_staleness is None else max_staleness,
                           staleness_weight_fn=None if weight is None else (lambda s: _square(s.float()))),
        batch_size=DRAW,
    )
    sampler = StalenessAwareSampler(max_staleness=max_staleness, weight=weight, version_key="policy_version")
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), batch_size=DRAW, sampler=sampler)
    state = rb.init({"id": jnp.zeros(1, jnp.int32), "policy_version": jnp.zeros(1, jnp.int32)})
    for a in range(N_ADDS):
        sl = slice(a * STEP, (a + 1) * STEP)
        trb.extend(TensorDict({"id": torch.as_tensor(ids[sl]), "policy_version": torch.as_tensor(versions[sl])},
                              batch_size=[STEP]))
        state = rb.add(state, {"id": jnp.asarray(ids[sl], jnp.int32),
                               "policy_version": jnp.asarray(versions[sl], jnp.int32)})
    trb.sampler.consumer_version = CURRENT
    state = set_policy_version(state, CURRENT)

    stored = ids[-CAP:]
    s = CURRENT - versions[-CAP:]
    w = 1.0 / (s + 1.0) if weight is None else _square(s.astype(np.float64))
    if max_staleness is not None:
        w = np.where(s <= max_staleness, w, 0.0)
    p = w / w.sum()

    t_counts = np.zeros(ids.size)
    r_counts = np.zeros(ids.size)
    for k in range(2):
        td = trb.sample()
        np.add.at(t_counts, td["id"].numpy(), 1)
        state, out, info = jax.jit(rb.sample)(state, jax.random.key(k))
        np.add.at(r_counts, np.asarray(out["id"]), 1)
        np.testing.assert_array_equal(np.asarray(info["staleness"]), CURRENT - np.asarray(out["id"]) // STEP)
    keep = np.isin(ids, stored[p > 0])
    assert t_counts[~keep].sum() == 0 and r_counts[~keep].sum() == 0  # the same window
    want = p[p > 0]
    for c in (t_counts[keep], r_counts[keep]):
        assert stats.chisquare(c, want * c.sum()).pvalue > 1e-4
    table = np.stack([t_counts[keep], r_counts[keep]])
    assert stats.chi2_contingency(table).pvalue > 1e-4
