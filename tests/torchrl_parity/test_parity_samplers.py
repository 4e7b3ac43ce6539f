"""Samplers against TorchRL's on the same stored data: ``drop_last`` with too few items (TorchRL
raises, rlbuf returns all padding: the documented difference), ``is_init`` at slice starts (the
same rule on both sides), and ``span`` (the same distribution of (trajectory, start offset),
two-sample chi-square). ``PrioritizedSampler`` is compared in ``test_parity_prioritized.py``;
the prioritized options without a TorchRL run (``reduction``, ``max_priority_within_buffer``)
are tested against numpy references in ``tests/samplers/test_priority_params.py``."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

pytest.importorskip("torchrl")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import LazyTensorStorage as TLazyTensorStorage  # noqa: E402
from torchrl.data import ReplayBuffer as TReplayBuffer  # noqa: E402
from torchrl.data import SamplerWithoutReplacement as TSamplerWithoutReplacement  # noqa: E402
from torchrl.data import SliceSampler as TSliceSampler  # noqa: E402
from torchrl.data import SliceSamplerWithoutReplacement as TSliceSamplerWithoutReplacement  # noqa: E402
from torchrl.data import TensorDictReplayBuffer  # noqa: E402

from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement  # noqa: E402
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

LENGTHS = (3, 4, 6, 2, 5)
N = 3


def episodes():
    ep = np.concatenate([np.full(n, i + 1) for i, n in enumerate(LENGTHS)]).astype(np.int32)
    step = np.concatenate([np.arange(n) for n in LENGTHS]).astype(np.int32)
    return {"ep": ep, "step": step, "is_init": step == 0}


def torchrl_td(d):
    return TensorDict({k: torch.from_numpy(v.copy()) for k, v in d.items()}, batch_size=[len(d["ep"])])


@pytest.mark.parametrize("case", ["items", "slices"])
def test_drop_last_with_too_few_items(case):
    """The issue's two cases: TorchRL raises; rlbuf's can_sample is False and sample is padding."""
    if case == "items":
        trb = TReplayBuffer(storage=TLazyTensorStorage(32), sampler=TSamplerWithoutReplacement(drop_last=True),
                            batch_size=16)
        trb.extend(torch.arange(10))
        rb = ReplayBuffer(storage=LazyTensorStorage(32), sampler=SamplerWithoutReplacement(drop_last=True),
                          batch_size=16)
        data = {"x": jnp.arange(10)}
    else:
        td = TensorDict({"ep": torch.arange(12) // 4}, batch_size=[12])
        sampler = TSliceSamplerWithoutReplacement(num_slices=4, traj_key="ep", drop_last=True)
        trb = TensorDictReplayBuffer(storage=TLazyTensorStorage(32), batch_size=8, sampler=sampler)
        trb.extend(td)
        rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=8,
                          sampler=SliceSamplerWithoutReplacement(num_slices=4, traj_key="ep", drop_last=True))
        data = {"ep": jnp.arange(12) // 4}
    with pytest.raises(ValueError, match="greater than the storage capacity"):
        trb.sample()
    state = rb.add(rb.init(data), data)
    assert not bool(rb.can_sample(state))
    _, batch, info = rb.sample(state, jax.random.key(0))
    assert not np.asarray(info["mask"]).any() and not np.asarray(batch["x" if case == "items" else "ep"]).any()


def test_is_init_at_slice_starts():
    d = episodes()
    trb = TensorDictReplayBuffer(storage=TLazyTensorStorage(32), batch_size=8 * N,
                                 sampler=TSliceSampler(slice_len=N, traj_key="ep"))
    trb.extend(torchrl_td(d))
    rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=8 * N, sampler=SliceSampler(slice_len=N, traj_key="ep"))
    state = rb.add(rb.init(d), jax.tree_util.tree_map(jnp.asarray, d))
    theirs = trb.sample()
    t_init, t_step = theirs["is_init"].numpy().reshape(-1, N), theirs["step"].numpy().reshape(-1, N)
    _, ours, _ = rb.sample(state, jax.random.key(0))
    o_init, o_step = np.asarray(ours["is_init"]), np.asarray(ours["step"])
    for init, step in ((t_init, t_step), (o_init, o_step)):
        want = step == 0
        want[:, 0] = True
        np.testing.assert_array_equal(init, want)


def _offset_counts(ep, step, real):
    """(trajectory, start offset) of slices given their episode, first stored step and length."""
    c = collections.Counter()
    for e, st, r in zip(ep, step, real):
        c[(int(e), int(st) if st > 0 or r == N else int(r) - N)] += 1
    return c


def test_span_left_distribution_matches_torchrl():
    """span=(True, False): TorchRL lets slices start up to N - 1 steps before a trajectory (the
    semantics agree on the left side; see the README for the right side)."""
    d = episodes()
    trb = TensorDictReplayBuffer(storage=TLazyTensorStorage(32), batch_size=64 * N,
                                 sampler=TSliceSampler(slice_len=N, traj_key="ep", span=(True, False)))
    trb.extend(torchrl_td(d))
    torch.manual_seed(0)
    theirs = collections.Counter()
    for _ in range(30):
        s = trb.sample()
        ends = np.flatnonzero(s["next", "truncated"].numpy().reshape(-1))
        starts = np.concatenate([[0], ends[:-1] + 1])
        theirs += _offset_counts(s["ep"].numpy()[starts], s["step"].numpy()[starts], ends - starts + 1)

    rb = ReplayBuffer(storage=LazyTensorStorage(32), batch_size=64 * N,
                      sampler=SliceSampler(slice_len=N, traj_key="ep", span=(True, False)))

    @jax.jit
    def run(key):
        data = jax.tree_util.tree_map(jnp.asarray, d)
        state = rb.add(rb.init(data), data)

        def body(state, k):
            state, batch, info = rb.sample(state, k)
            return state, (batch["ep"][:, 0], batch["step"][:, 0], info["mask"].sum(1))

        return jax.lax.scan(body, state, jax.random.split(key, 30))[1]

    ours = _offset_counts(*(np.asarray(x).reshape(-1) for x in run(jax.random.key(0))))
    cells = sorted(set(theirs) | set(ours))
    assert set(theirs) == set(ours), (sorted(theirs), sorted(ours))
    table = np.array([[theirs[c] for c in cells], [ours[c] for c in cells]])
    assert stats.chi2_contingency(table).pvalue > 1e-3
