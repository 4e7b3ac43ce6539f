"""Prioritized samplers' TorchRL options: ``alpha``/``beta`` changed without recompiling
(``set_alpha`` / ``set_beta`` on the state), ``reduction`` of priorities with extra dims per
item (``[N, 1]`` for an index ``[N]``), and ``max_priority_within_buffer``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.prioritized import PrioritizedSampler, set_alpha, set_beta
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.sumtree import SumTree
from rlbuf.storages import LazyTensorStorage

N, BS = 16, 8


def data(n=N, start=0):
    t = np.arange(start, start + n)
    return {"obs": jnp.asarray(t, jnp.float32), "ep": jnp.asarray(t // 4, jnp.int32)}


def leaves(state):
    t = state.sampler.tree
    return np.asarray(SumTree(state.layout.size, t.sums[1].shape[0], t.sums[0].dtype.name).leaves(t))


def buffer(**kw):
    rb = ReplayBuffer(storage=LazyTensorStorage(N), sampler=PrioritizedSampler(N, 0.5, 0.4, eps=0.0, **kw),
                      batch_size=BS)
    state = rb.add(rb.init(data(1)), data())
    return rb, state


PRIO = np.arange(1, N + 1, dtype=np.float32)


def test_beta_annealing_does_not_recompile():
    rb, state = buffer()
    state = rb.update_priority(state, jnp.arange(N), jnp.asarray(PRIO))
    sample = jax.jit(rb.sample)
    anneal = jax.jit(set_beta)
    p = PRIO ** 0.5
    for beta in (0.4, 0.55, 0.7, 0.85, 1.0):
        state = anneal(state, beta)
        state, _, info = sample(state, jax.random.key(0))
        idx = np.asarray(info["index"])
        np.testing.assert_allclose(np.asarray(info["weight"]), (p[idx] / p.min()) ** -beta, rtol=1e-5)
    assert sample._cache_size() == 1 and anneal._cache_size() == 1
    with pytest.raises(ValueError, match=r"beta must be a finite scalar in \[0.0, 1.0\]"):
        set_beta(state, 1.5)
    with pytest.raises(TypeError, match="no prioritized sampler state"):
        set_beta({"x": jnp.zeros(2)}, 0.5)


def test_alpha_change_reexponentiates_stored_priorities():
    rb, state = buffer()
    state = rb.update_priority(state, jnp.arange(N), jnp.asarray(PRIO))
    np.testing.assert_allclose(leaves(state), PRIO ** 0.5, rtol=1e-5)
    change = jax.jit(set_alpha)
    state = change(state, 0.9)
    np.testing.assert_allclose(leaves(state), PRIO ** 0.9, rtol=1e-4)
    state = rb.update_priority(state, jnp.asarray([3]), jnp.asarray([7.0]))  # new updates use the new alpha
    assert leaves(state)[3] == pytest.approx(7.0 ** 0.9, rel=1e-5)
    state = change(state, 0.0)
    np.testing.assert_allclose(leaves(state), 1.0)
    assert change._cache_size() == 1


def test_alpha_and_beta_of_slice_samplers_and_batched_states():
    rb = ReplayBuffer(storage=LazyTensorStorage(N), batch_size=BS,
                      sampler=PrioritizedSliceSampler(N, 0.5, 0.4, eps=0.0, slice_len=2, traj_key="ep"))
    state = rb.add(rb.init(data(1)), data())
    state = rb.update_priority(state, jnp.arange(N), jnp.asarray(PRIO))
    state = set_alpha(set_beta(state, 0.9), 1.0)
    np.testing.assert_allclose(np.asarray(state.sampler.prio), PRIO, rtol=1e-4)
    assert float(state.sampler.beta) == pytest.approx(0.9)
    # stacked states (a leading shard / worker axis) are set per entry
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), state.sampler)
    out = set_alpha({"s": stacked}, 2.0)["s"]
    np.testing.assert_allclose(np.asarray(out.prio), np.stack([PRIO ** 2] * 2), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out.tree.sums[0][:, 0]), np.asarray(out.tree.sums[-1]).sum(1), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["max", "min", "mean", "median", "sum"])
def test_priority_with_extra_dims_is_reduced(reduction):
    rb, state = buffer(reduction=reduction)
    per_step = np.random.default_rng(0).uniform(1, 5, size=(N, 4)).astype(np.float32)
    state = rb.update_priority(state, jnp.arange(N), jnp.asarray(per_step))
    want = np.sort(per_step, 1)[:, 1] if reduction == "median" else getattr(np, reduction)(per_step, 1)
    np.testing.assert_allclose(leaves(state), want ** 0.5, rtol=1e-5)


def test_priority_n_by_1_for_index_n():
    rb, state = buffer()
    a = rb.update_priority(state, jnp.arange(N), jnp.asarray(PRIO)[:, None])
    b = rb.update_priority(state, jnp.arange(N), jnp.asarray(PRIO))
    np.testing.assert_array_equal(leaves(a), leaves(b))
    with pytest.raises(ValueError, match=r"priority has shape \(3,\), expected \(16,\)"):
        rb.update_priority(state, jnp.arange(N), jnp.ones(3))
    with pytest.raises(ValueError, match="reduction must be one of"):
        buffer(reduction="prod")[0].update_priority(state, jnp.arange(N), jnp.asarray(PRIO))


def test_max_priority_within_buffer():
    """New items get the largest priority stored now, not the largest ever given."""
    for within, want in ((False, 100.0), (True, 9.0)):
        rb, state = buffer(max_priority_within_buffer=within)
        state = rb.update_priority(state, jnp.arange(N), jnp.full(N, 2.0))
        state = rb.update_priority(state, jnp.asarray([0, 5]), jnp.asarray([100.0, 9.0]))
        state = rb.update_priority(state, jnp.asarray([0]), jnp.asarray([1.0]))  # the max is lowered
        state = rb.add(state, data(2, start=N))  # overwrites slots 0 and 1
        np.testing.assert_allclose(leaves(state)[:2], want ** 0.5, rtol=1e-5)
    # the max item itself overwritten: the next largest stored priority
    rb, state = buffer(max_priority_within_buffer=True)
    state = rb.update_priority(state, jnp.arange(N), jnp.asarray(PRIO))
    state = rb.add(state, data(1, start=N))  # overwrites slot 0 (priority 1): max is 16
    assert leaves(state)[0] == pytest.approx(16.0 ** 0.5)
    state = rb.update_priority(state, jnp.asarray([15, 0]), jnp.asarray([3.0, 3.0]))
    state = rb.add(state, data(1, start=N + 1))  # slot 1; stored max now 15
    assert leaves(state)[1] == pytest.approx(15.0 ** 0.5)
