"""``PrioritizedSampler`` against TorchRL's: the same items, priorities, ``alpha``/``beta``/``eps``
give the same stored tree values (``(p + eps) ** alpha``, new items at the max priority), the
same importance weights per item, and the same sampling distribution (two-sample chi-square, and
each side against the exact ``P(i)``); ``set_beta``/``set_alpha`` against TorchRL's setters.

TorchRL keeps its sum/min segment trees in a C++ extension (``torchrl._torchrl``). The CPU
torchrl 0.14.1 wheel installed here fails to load it against torch 2.13 (``undefined symbol
_ZN5torch8autograd13_wrap_outputs...``), and then ``PrioritizedSampler(...)`` raises
``RuntimeError: SumSegmentTreeFp32 is not available``. When the extension is missing, this file
stands in a numpy implementation of the four tree classes (:class:`_SumTree`, :class:`_MinTree`:
the data structure only, with the semantics of TorchRL's ``csrc/segment_tree.h``:
``query(l, r)`` reduces ``[l, r)``, ``scan_lower_bound(m)`` is the first index whose inclusive
prefix sum is ``>= m``, ``size`` when ``m`` exceeds the total). Everything that carries
TorchRL's semantics (priority transform, default priority of new items, max-priority
tracking, weight formula, alpha/beta setters) is TorchRL's own Python code, run unchanged.
With a wheel whose extension loads, the real trees are used.
"""

from __future__ import annotations

import collections
import functools
import importlib

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
from torchrl.data.replay_buffers.samplers import PrioritizedSampler as TPrioritizedSampler  # noqa: E402

from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.samplers.prioritized import PrioritizedSampler, set_alpha, set_beta  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

_TPRIO = importlib.import_module("torchrl.data.replay_buffers.samplers.prioritized")  # where _init looks
CAP, N_FIRST, N_NEW, B = 16, 12, 3, 32


class _SumTree:
    """numpy stand-in for ``SumSegmentTreeFp32``/``Fp64`` (leaf values; reductions on demand)."""

    identity = 0.0

    def __init__(self, size: int, dtype=np.float32):
        self.values = np.full(size, self.identity, dtype)

    def __len__(self):
        return len(self.values)

    def _idx(self, index):
        return np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, np.int64)

    def __getitem__(self, index):
        out = self.values[self._idx(index)]
        return torch.as_tensor(out) if isinstance(index, torch.Tensor) else out

    def __setitem__(self, index, value):
        value = value.cpu().numpy() if isinstance(value, torch.Tensor) else value
        self.values[self._idx(index)] = value

    update = __setitem__

    def query(self, left, right):
        return float(self.values[int(left):int(right)].sum(dtype=np.float64))

    def scan_lower_bound(self, mass):
        mass = np.asarray(mass.cpu() if isinstance(mass, torch.Tensor) else mass, np.float64)
        cum = np.cumsum(self.values, dtype=np.float64)
        out = np.searchsorted(cum, mass, side="left")
        return np.where(mass > cum[-1], len(self.values), out).astype(np.int64)


class _MinTree(_SumTree):
    """numpy stand-in for ``MinSegmentTreeFp32``/``Fp64``."""

    identity = np.inf

    def query(self, left, right):
        return float(self.values[int(left):int(right)].min())


@pytest.fixture
def torchrl_trees(monkeypatch):
    """TorchRL's tree classes, or the numpy stand-ins when its extension did not load."""
    if _TPRIO.SumSegmentTreeFp32 is not None:
        return "extension"
    for name, cls, dt in (("SumSegmentTreeFp32", _SumTree, np.float32), ("SumSegmentTreeFp64", _SumTree, np.float64),
                          ("MinSegmentTreeFp32", _MinTree, np.float32), ("MinSegmentTreeFp64", _MinTree, np.float64)):
        monkeypatch.setattr(_TPRIO, name, functools.partial(cls, dtype=dt))
    return "numpy stand-in"


def _pair(alpha, beta, eps):
    trb = TensorDictReplayBuffer(storage=TLazyTensorStorage(CAP), batch_size=B,
                                 sampler=TPrioritizedSampler(CAP, alpha=alpha, beta=beta, eps=eps))
    rb = ReplayBuffer(storage=LazyTensorStorage(CAP), sampler=PrioritizedSampler(CAP, alpha, beta, eps=eps),
                      batch_size=B)
    return trb, rb


def _extend(trb, rb, state, ids):
    trb.extend(TensorDict({"id": torch.as_tensor(ids)}, batch_size=[len(ids)]))
    return jax.jit(rb.add)(state, {"id": jnp.asarray(ids)})


def _torchrl_leaves(trb, n):
    return np.asarray(trb.sampler._sum_tree[torch.arange(n)], np.float64)


def _weights_by_item(index, weight):
    out = {}
    for i, w in zip(np.asarray(index).tolist(), np.asarray(weight, np.float64).tolist()):
        out.setdefault(i, w)
    return out


@pytest.mark.parametrize("alpha,beta,eps", [(0.6, 0.4, 1e-8), (1.0, 1.0, 1e-2), (0.3, 0.9, 1e-8)])
def test_same_priorities_weights_and_distribution(torchrl_trees, alpha, beta, eps):
    rng = np.random.default_rng(int(alpha * 10))
    trb, rb = _pair(alpha, beta, eps)
    state = rb.init({"id": jnp.zeros((1,), jnp.int32)})
    state = _extend(trb, rb, state, np.arange(N_FIRST, dtype=np.int32))
    # before any update: every item at priority 1
    np.testing.assert_allclose(np.asarray(rb.sampler._tree(state.layout).leaves(state.sampler.tree))[:N_FIRST],
                               _torchrl_leaves(trb, N_FIRST), rtol=1e-6)
    prio = rng.uniform(0.05, 4.0, size=N_FIRST).astype(np.float32)
    trb.update_priority(torch.arange(N_FIRST), torch.as_tensor(prio))
    state = jax.jit(rb.update_priority)(state, jnp.arange(N_FIRST), jnp.asarray(prio))
    # new items get the max raw priority on both sides (TorchRL's default_priority)
    state = _extend(trb, rb, state, np.arange(N_FIRST, N_FIRST + N_NEW, dtype=np.int32))
    n = N_FIRST + N_NEW
    ours = np.asarray(state.sampler.tree.sums[-1], np.float64)[:n]
    theirs = _torchrl_leaves(trb, n)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    p_exact = theirs / theirs.sum()

    sample = jax.jit(rb.sample)
    np.random.seed(0)  # TorchRL's CPU sampler draws its masses with np.random
    counts = {"torchrl": np.zeros(n), "rlbuf": np.zeros(n)}
    w_t, w_r = {}, {}
    for i in range(60):
        _, info = trb.sample(return_info=True)
        idx = np.asarray(info["index"])
        np.add.at(counts["torchrl"], idx, 1)
        w_t.update(_weights_by_item(idx, info["priority_weight"]))
        state, _, rinfo = sample(state, jax.random.key(i))
        ridx = np.asarray(rinfo["index"])
        assert np.asarray(rinfo["mask"]).all() and (ridx < n).all()
        np.add.at(counts["rlbuf"], ridx, 1)
        w_r.update(_weights_by_item(ridx, rinfo["weight"]))
    # importance weights: (p_i / p_min) ** -beta on both sides, per item
    common = sorted(set(w_t) & set(w_r))
    assert len(common) >= n - 2, (sorted(w_t), sorted(w_r))
    np.testing.assert_allclose([w_r[i] for i in common], [w_t[i] for i in common], rtol=1e-5)
    # the same distribution: each side against P(i), and the two samples against each other
    for side, c in counts.items():
        pval = stats.chisquare(c, p_exact * c.sum()).pvalue
        assert pval > 1e-3, (side, torchrl_trees, pval, c, p_exact * c.sum())
    assert stats.chi2_contingency(np.stack([counts["torchrl"], counts["rlbuf"]])).pvalue > 1e-3


def test_beta_and_alpha_setters(torchrl_trees):
    """``set_beta``/``set_alpha`` on the state = TorchRL's ``sampler.beta``/``sampler.alpha``
    setters: the same re-exponentiated tree values and weights."""
    trb, rb = _pair(0.7, 0.4, 1e-8)
    state = rb.init({"id": jnp.zeros((1,), jnp.int32)})
    state = _extend(trb, rb, state, np.arange(8, dtype=np.int32))
    prio = np.array([0.5, 1.0, 2.0, 4.0, 0.25, 3.0, 1.5, 0.75], np.float32)
    trb.update_priority(torch.arange(8), torch.as_tensor(prio))
    state = jax.jit(rb.update_priority)(state, jnp.arange(8), jnp.asarray(prio))
    trb.sampler.alpha, trb.sampler.beta = 0.9, 1.0
    state = jax.jit(lambda s: set_beta(set_alpha(s, 0.9), 1.0))(state)
    np.testing.assert_allclose(np.asarray(state.sampler.tree.sums[-1], np.float64)[:8], _torchrl_leaves(trb, 8),
                               rtol=1e-5)
    np.random.seed(1)
    _, info = trb.sample(return_info=True)
    _, _, rinfo = jax.jit(rb.sample)(state, jax.random.key(0))
    w_t = _weights_by_item(info["index"], info["priority_weight"])
    w_r = _weights_by_item(rinfo["index"], rinfo["weight"])
    common = sorted(set(w_t) & set(w_r))
    assert common
    np.testing.assert_allclose([w_r[i] for i in common], [w_t[i] for i in common], rtol=1e-5)
    leaves = _torchrl_leaves(trb, 8)
    want = (leaves / leaves.min()) ** -1.0  # beta = 1: the exact (p_i / p_min) ** -beta
    np.testing.assert_allclose([w_r[i] for i in common], want[common], rtol=1e-5)


@pytest.mark.parametrize("span", [False, (False, 1), (False, True)])
def test_prioritized_slices_right_span(torchrl_trees, span):
    """``PrioritizedSliceSampler`` (``span`` right, as TorchRL supports it): the same slice starts
    (two-sample chi-square over start steps) and real lengths, and importance weights that
    differ from TorchRL's by one common factor, ours >= theirs (the README's row: TorchRL takes
    ``p_min`` over every stored step, rlbuf over the valid starts)."""
    from torchrl.data import PrioritizedSliceSampler as TPrioritizedSliceSampler

    from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler

    lengths, n, s = (3, 4, 6, 2), 3, 64
    ep = np.concatenate([np.full(k, j + 1) for j, k in enumerate(lengths)]).astype(np.int32)
    i = np.arange(len(ep), dtype=np.int32)
    prio = np.random.default_rng(4).uniform(0.2, 3.0, size=len(ep)).astype(np.float32)
    trb = TensorDictReplayBuffer(storage=TLazyTensorStorage(32), batch_size=s * n, sampler=TPrioritizedSliceSampler(
        32, alpha=1.0, beta=0.5, eps=1e-8, slice_len=n, traj_key="ep", span=span))
    trb.extend(TensorDict({"ep": torch.as_tensor(ep), "i": torch.as_tensor(i)}, batch_size=[len(ep)]))
    trb.update_priority(torch.arange(len(ep)), torch.as_tensor(prio))
    rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=s * n, sampler=PrioritizedSliceSampler(
        32, 1.0, 0.5, eps=1e-8, slice_len=n, traj_key="ep", span=span))
    state = rb.init({"ep": jnp.asarray(ep), "i": jnp.asarray(i)})
    state = jax.jit(rb.add)(state, {"ep": jnp.asarray(ep), "i": jnp.asarray(i)})
    state = jax.jit(rb.update_priority)(state, jnp.arange(len(ep)), jnp.asarray(prio))
    sample = jax.jit(rb.sample)
    np.random.seed(2)
    theirs, ours = collections.Counter(), collections.Counter()
    w_t, w_r = {}, {}
    for c in range(12):
        td, info = trb.sample(return_info=True)
        ends = np.flatnonzero(np.asarray(td["next", "truncated"]).reshape(-1))
        starts = np.concatenate([[0], ends[:-1] + 1])
        steps = np.asarray(td["i"]).reshape(-1)
        for a, b in zip(starts, ends):
            theirs[(int(steps[a]), int(b - a + 1))] += 1
            w_t[int(steps[a])] = float(np.asarray(info["priority_weight"]).reshape(-1)[a])
        state, batch, rinfo = sample(state, jax.random.key(c))
        for row, m, w in zip(np.asarray(batch["i"]), np.asarray(rinfo["mask"]), np.asarray(rinfo["weight"])):
            ours[(int(row[0]), int(m.sum()))] += 1
            w_r[int(row[0])] = float(w[0])
    if span and span[1] is True:  # ((False, 1) == (False, True) in Python)
        # TorchRL's prioritized right=True masks each trajectory's last step (its SliceSampler does
        # not: slices of one step); rlbuf keeps one rule for all slice samplers (README row). The
        # two then agree conditionally on the other starts (both draw in proportion to priority).
        assert not [c for c in theirs if c[1] == 1] and [c for c in ours if c[1] == 1]
        ours = collections.Counter({c: k for c, k in ours.items() if c[1] > 1})
    cells = sorted(set(theirs) | set(ours))
    assert set(ours) == set(theirs) or min(theirs[c] + ours[c] for c in cells) < 10, (sorted(theirs), sorted(ours))
    table = np.array([[theirs[c] for c in cells], [ours[c] for c in cells]])
    assert stats.chi2_contingency(table).pvalue > 1e-3, (cells, table)
    common = sorted(set(w_t) & set(w_r))
    ratio = np.array([w_r[k] / w_t[k] for k in common])
    assert len(common) >= 3 and ratio.min() >= 1 - 1e-5
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
