"""Shared fixtures for the collector tests: the ground-truth env and invariant checkers.

JAX compile time dominates these tests, so collectors and their jitted ``collect`` are built
once per module and the configurations are tiny.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.envs import GroundTruthEnv
from rlbuf.envs.ground_truth import OBS_EPISODE_ID, OBS_LENGTH, OBS_STEP


@pytest.fixture(scope="session")
def gt_env():
    return GroundTruthEnv(num_actions=3)


def run_batches(collector, n, key=0, policy_params=None, fn=None):
    """``n`` consecutive batches of ``collector`` (jitted collect unless ``fn`` is given)."""
    fn = fn or jax.jit(collector.collect)
    state = collector.init(jax.random.key(key))
    out = []
    for _ in range(n):
        state, b = fn(state, policy_params)
        out.append(jax.tree.map(np.asarray, b))
    return state, out


def rows(batches, ndim):
    """Concatenate batches along time and flatten the leading batch dims into env rows:
    leaves ``[N, sum(T), ...]`` (``ndim`` = number of batch dims, time last)."""

    def cat(*xs):
        x = np.concatenate(xs, axis=ndim - 1)
        lead = int(np.prod(x.shape[: ndim - 1], dtype=np.int64))
        return x.reshape((lead,) + x.shape[ndim - 1:])

    return jax.tree.map(cat, *batches)


def reference_traj_ids(done: np.ndarray, first_id: int = 0) -> np.ndarray:
    """TorchRL's rule in plain numpy: env ``i`` starts with ``i``; after each step each done
    env (in env order) takes the next id of one global counter. ``done``: ``[N, T]``."""
    n, t_total = done.shape
    ids = first_id + np.arange(n)
    counter = first_id + n
    out = np.zeros((n, t_total), np.int64)
    for t in range(t_total):
        out[:, t] = ids
        for i in range(n):
            if done[i, t]:
                ids[i] = counter
                counter += 1
    return out


def check_generic(r, first_id=0):
    """Invariants that hold for any env, on rows ``r`` (leaves ``[N, T, ...]``)."""
    obs, nobs = r["observation"], r["next"]["observation"]
    nxt = r["next"]
    done, term, trunc = nxt["done"], nxt["terminated"], nxt["truncated"]
    assert done.dtype == term.dtype == trunc.dtype == np.bool_
    np.testing.assert_array_equal(done, term | trunc)
    # continuing steps: the next step starts where this one ended
    cont = ~done[:, :-1]
    for o, no in zip(jax.tree.leaves(obs), jax.tree.leaves(nobs)):
        np.testing.assert_array_equal(o[:, 1:][cont], no[:, :-1][cont])
    # step counts and the running return restart after every done step
    sc = r["step_count"]
    assert sc.dtype == np.int32
    np.testing.assert_array_equal(sc[:, 1:][cont], sc[:, :-1][cont] + 1)
    np.testing.assert_array_equal(sc[:, 1:][~cont], 0)
    ids = r["collector"]["traj_ids"]
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, reference_traj_ids(done, first_id))
    ret, rew = nxt["episode_reward"], nxt["reward"]
    assert ret.dtype == rew.dtype == np.float32
    same = ids[:, 1:] == ids[:, :-1]
    np.testing.assert_allclose(ret[:, 1:][same], ret[:, :-1][same] + rew[:, 1:][same], rtol=1e-5)
    np.testing.assert_allclose(ret[sc == 0], rew[sc == 0])
    for i in range(ids.shape[0]):  # whole episodes: the return is numpy's cumulative sum
        for tid in np.unique(ids[i]):
            sel = ids[i] == tid
            if sc[i][sel][0] == 0:
                np.testing.assert_allclose(ret[i][sel], np.cumsum(rew[i][sel]), rtol=1e-5)


def check_ground_truth(r, max_frames_per_traj=None, terminate=True, first_id=0):
    """Invariants of rows ``r`` collected on :class:`GroundTruthEnv` (starting at ``init``)."""
    check_generic(r, first_id)
    obs, nobs = r["observation"], r["next"]["observation"]
    nxt = r["next"]
    done, term, trunc = nxt["done"], nxt["terminated"], nxt["truncated"]
    # next observation is the true successor, also at done steps (final obs kept)
    np.testing.assert_array_equal(nobs[..., OBS_EPISODE_ID], obs[..., OBS_EPISODE_ID])
    np.testing.assert_array_equal(nobs[..., OBS_LENGTH], obs[..., OBS_LENGTH])
    np.testing.assert_array_equal(nobs[..., OBS_STEP], obs[..., OBS_STEP] + 1)
    # the step after a done step is a reset observation of a new episode
    after = done[:, :-1]
    assert (obs[:, 1:][after][:, OBS_STEP] == 0).all()
    assert (obs[:, 1:][after][:, OBS_EPISODE_ID] != obs[:, :-1][after][:, OBS_EPISODE_ID]).all()
    # the collector's step count equals the env's own step (all episodes start at init)
    np.testing.assert_array_equal(r["step_count"], obs[..., OBS_STEP])
    ended = nobs[..., OBS_STEP] == nobs[..., OBS_LENGTH]
    np.testing.assert_array_equal(term, ended & terminate)
    limit = np.zeros_like(ended) if max_frames_per_traj is None else (
        r["step_count"] + 1 == max_frames_per_traj)
    np.testing.assert_array_equal(trunc, (ended & (not terminate)) | limit)
    if max_frames_per_traj is not None:
        assert r["step_count"].max() < max_frames_per_traj
    np.testing.assert_array_equal(nxt["reward"], 1.0 + r["action"])
    # one trajectory id per episode and vice versa
    ids = r["collector"]["traj_ids"]
    key = obs[..., 0].astype(np.int64) * (1 << 32) + obs[..., OBS_EPISODE_ID]
    pairs = set(zip(ids.ravel().tolist(), key.ravel().tolist()))
    assert len(pairs) == len(np.unique(ids)) == len(np.unique(key))


@pytest.fixture(scope="session")
def checks():
    class C:
        pass

    c = C()
    c.run_batches = staticmethod(run_batches)
    c.rows = staticmethod(rows)
    c.reference_traj_ids = staticmethod(reference_traj_ids)
    c.generic = staticmethod(check_generic)
    c.ground_truth = staticmethod(check_ground_truth)
    c.constant_policy = staticmethod(constant_policy)
    return c


def constant_policy(action_value):
    """A policy returning ``action_value`` for every env, with an extra entry."""

    def policy(params, obs, key):
        lead = obs.shape[:-1]
        a = jnp.full(lead, action_value, jnp.int32) + params
        return a, {"extra": jnp.ones(lead, jnp.float32)}

    return policy
