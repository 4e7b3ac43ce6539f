"""Shared checks of TorchRL's MARL layout on batches of :class:`rlbuf.envs.GroundTruthMARLEnv`
(agent ``i`` observes ``[i, episode_id, step, length, (1 for adversaries)]``)."""

from __future__ import annotations

import jax
import numpy as np
from suite_checks import collector_checks

I, EP, STEP, LEN = 0, 1, 2, 3


def gt_policy(spaces):
    """The ground-truth policy: agent ``i`` at step ``s`` takes ``(s + i) % n`` (always allowed
    by the env's masks), so rewards are known from observations."""

    def policy(params, obs, key):
        return {g: ((o["observation"][..., STEP] + o["observation"][..., I]) % spaces[g].n).astype(spaces[g].dtype)
                for g, o in obs.items() if g in spaces}

    return policy


def expected_mask(obs, n):
    """``a <= (step + i) % n`` for every agent observation ``[..., >=4]`` -> bool ``[..., n]``."""
    allowed = (obs[..., STEP] + obs[..., I]) % n
    return np.arange(n) <= allowed[..., None]


def check_marl(r, gt, groups, spaces, *, random=False, max_frames_per_traj=None):
    """Rows ``r`` (leaves ``[N, T, ...]``) collected from ``JaxMARLEnv(gt)`` from ``init``."""
    nxt = r["next"]
    done, term, trunc = nxt["done"], nxt["terminated"], nxt["truncated"]
    np.testing.assert_array_equal(done, term | trunc)
    ids = r["collector"]["traj_ids"]
    np.testing.assert_array_equal(ids, collector_checks.reference_traj_ids(done))
    g0 = next(iter(groups))
    obs0, nobs0 = r[g0]["observation"][:, :, 0], nxt[g0]["observation"][:, :, 0]
    step, nstep = obs0[..., STEP], nobs0[..., STEP]
    # the true final observation: the next observation always continues the episode
    np.testing.assert_array_equal(nstep, step + 1)
    np.testing.assert_array_equal(nobs0[..., EP], obs0[..., EP])
    cont = ~done[:, :-1]
    np.testing.assert_array_equal(obs0[:, 1:][cont], nobs0[:, :-1][cont])
    assert (step[:, 1:][~cont] == 0).all()
    assert (obs0[:, 1:][~cont][:, EP] != obs0[:, :-1][~cont][:, EP]).all()
    np.testing.assert_array_equal(r["step_count"], step)
    # episode flags: the env ends at its length (terminated) or its time limit (truncated)
    limit = nstep >= gt.max_steps
    ended = (nstep >= nobs0[..., LEN]) | limit
    mf = np.zeros_like(ended) if max_frames_per_traj is None else nstep >= max_frames_per_traj
    np.testing.assert_array_equal(term, ended & ~limit)
    np.testing.assert_array_equal(trunc, limit | mf)
    team = np.zeros(done.shape, np.float32)
    for g, names in groups.items():
        o, no, a = r[g]["observation"], nxt[g]["observation"], r[g]["action"]
        A = len(names)
        assert o.shape[2] == A and a.shape[:3] == o.shape[:3]
        np.testing.assert_array_equal(o[..., I], np.broadcast_to([gt.agents.index(n) for n in names], o.shape[:3]))
        np.testing.assert_array_equal(o[..., STEP], np.repeat(step[..., None], A, -1))
        np.testing.assert_array_equal(no[..., STEP], np.repeat(nstep[..., None], A, -1))
        n = spaces[g].n
        if gt.masks:
            np.testing.assert_array_equal(r[g]["action_mask"], expected_mask(o, n))
            np.testing.assert_array_equal(nxt[g]["action_mask"], expected_mask(no, n))
            # every action (random ones included) is allowed by the mask
            assert np.take_along_axis(r[g]["action_mask"], a[..., None].astype(np.int64), -1).all()
        else:
            assert "action_mask" not in r[g]
        if not random:
            np.testing.assert_array_equal(a, (o[..., STEP] + o[..., I]) % n)
        rew = nxt[g]["reward"]
        np.testing.assert_array_equal(rew, a.astype(np.float32))
        team += rew.sum(-1)
        # per-agent returns: cumulative sums within each episode
        ret = nxt[g]["episode_reward"]
        for row in range(ids.shape[0]):
            for tid in np.unique(ids[row]):
                sel = ids[row] == tid
                if step[row][sel][0] == 0:
                    np.testing.assert_allclose(ret[row][sel], np.cumsum(rew[row][sel], axis=0))
        # per-agent flags: the early agent is done from its early step on and stays done
        early = np.array([nm == gt.early_agent for nm in names])
        gone_before = early & (step[..., None] >= gt.early_step)
        gone_now = early & (nstep[..., None] >= gt.early_step)
        e_term, e_trunc = term[..., None], trunc[..., None]
        want_term = gone_before | (gone_now & ~e_trunc) | e_term
        want_trunc = e_trunc & ~gone_before
        np.testing.assert_array_equal(nxt[g]["terminated"], want_term)
        np.testing.assert_array_equal(nxt[g]["truncated"], want_trunc)
        np.testing.assert_array_equal(nxt[g]["done"], want_term | want_trunc)
        # an agent's done at the episode's end is the episode's
        assert nxt[g]["done"][done].all()
    np.testing.assert_allclose(nxt["reward"], team)
    return r


def run(collector, n, key=0, params=None):
    """``n`` batches of a jitted collect (compiled once), as rows ``[N, sum T, ...]``."""
    fn = jax.jit(collector.collect)
    state = collector.init(jax.random.key(key))
    out = []
    for _ in range(n):
        state, b = fn(state, params)
        out.append(jax.tree.map(np.asarray, b))
    assert fn._cache_size() == 1
    ndim = len(collector.batch_shape)
    return collector_checks.rows(out, ndim), out
