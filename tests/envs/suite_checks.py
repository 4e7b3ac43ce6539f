"""Shared checks for the env-suite tests: the collector invariants (from
``tests/collectors/conftest.py``), a by-hand replay of the suite, and slice sampling."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

_spec = importlib.util.spec_from_file_location(
    "_collector_checks", os.path.join(os.path.dirname(__file__), "..", "collectors", "conftest.py"))
collector_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collector_checks)

B = 4  # envs per collector in every suite test
TRAJ = ("collector", "traj_ids")


def collect_batches(collector, n, key=0, policy_params=None):
    """``n`` batches of a jitted ``collect`` and the collector state before each one."""
    fn = jax.jit(collector.collect)
    state = jax.jit(collector.init)(jax.random.key(key))
    states, batches = [], []
    for _ in range(n):
        states.append(state)
        state, b = fn(state, policy_params)
        batches.append(jax.tree.map(np.asarray, b))
    assert fn._cache_size() == 1
    return states, batches


def leaves_at(tree, *idx):
    return jax.tree.map(lambda x: np.asarray(x)[idx], tree)


def replay_by_hand(suite_step, states, batches, limit=None):
    """Step the suite by hand from each batch's starting env states with the batch's actions,
    up to each env's first done step in the batch: the stored next observation, reward and
    flags must be the suite's own (at the done step: the final observation, not a reset one).

    ``suite_step(inner, action) -> (obs, inner, reward, terminated, truncated)`` is written in
    the test with the suite's own API, on one env (no env axis). ``limit``: the adapter's time
    limit (a truncation on top of the suite's flags). Returns how many done steps were checked.
    """
    step = jax.jit(suite_step)
    dones = 0
    for cstate, b in zip(states, batches):
        n_env, T = b["next"]["done"].shape
        for i in range(n_env):
            inner = jax.tree.map(lambda x: x[i], cstate.env_state.inner)
            time = int(cstate.env_state.time[i])
            for t in range(T):
                obs, inner, rew, term, trunc = step(inner, leaves_at(b["action"], i, t))
                time += 1
                jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5,
                                                                     atol=1e-6),
                             obs, leaves_at(b["next"]["observation"], i, t))
                np.testing.assert_allclose(float(rew), b["next"]["reward"][i, t], rtol=1e-5, atol=1e-6)
                assert bool(term) == b["next"]["terminated"][i, t]
                trunc = bool(trunc) or (limit is not None and time >= limit)
                assert trunc == b["next"]["truncated"][i, t]
                if b["next"]["done"][i, t]:
                    dones += 1
                    break
    return dones


def check_suite_batches(batches, first_id=0):
    """Every invariant of the Collector tests that holds for any env."""
    r = collector_checks.rows(batches, 2)
    collector_checks.check_generic(r, first_id)
    # a trajectory running over a batch boundary keeps its id
    for a, b in zip(batches[:-1], batches[1:]):
        cont = ~a["next"]["done"][:, -1]
        np.testing.assert_array_equal(b["collector"]["traj_ids"][:, 0][cont],
                                      a["collector"]["traj_ids"][:, -1][cont])
    return r


def check_slices(batches, num_slices=4, slice_len=3, seeds=5):
    """The batches through ``LazyTensorStorage(ndim=2)`` + ``SliceSampler``: every slice is
    consecutive steps of one trajectory, located by ``info["index"]``."""
    size = sum(int(np.prod(b["next"]["done"].shape)) for b in batches)
    rb = ReplayBuffer(storage=LazyTensorStorage(size, ndim=2),
                      sampler=SliceSampler(num_slices=num_slices, traj_key=TRAJ),
                      batch_size=num_slices * slice_len)
    state = rb.init(batches[0])
    add = jax.jit(rb.add)
    for b in batches:
        state = add(state, b)
    sample = jax.jit(rb.sample)
    for s in range(seeds):
        state, batch, info = sample(state, jax.random.key(s))
        ids = np.asarray(batch[TRAJ[0]][TRAJ[1]])
        assert ids.shape == (num_slices, slice_len)
        assert (ids == ids[:, :1]).all(), ids
        sc = np.asarray(batch["step_count"])
        assert (np.diff(sc, axis=1) == 1).all(), sc
        stored = jax.tree.map(lambda x: np.asarray(x)[tuple(np.asarray(i) for i in info["index"])],
                              state.storage["observation"])
        jax.tree.map(np.testing.assert_array_equal, stored, jax.tree.map(np.asarray, batch["observation"]))
        # inside a slice, the next observation of a step is the following step's observation
        jax.tree.map(lambda o, no: np.testing.assert_array_equal(np.asarray(o)[:, 1:],
                                                                 np.asarray(no)[:, :-1]),
                     batch["observation"], batch["next"]["observation"])
