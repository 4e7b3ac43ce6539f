"""HostCollector on a real EnvPool pool (``envpool.make_gymnasium("CartPole-v1")``).

CartPole's physics is deterministic, so every stored transition is checked against gymnasium's
own ``CartPoleEnv`` stepped by hand from the stored observation with the stored action: the
next observation (also the final one of a terminated episode), the reward and the
termination flag. Skipped where envpool is not installed (it has no wheels for every platform).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.collectors.host import HostCollector

envpool = pytest.importorskip("envpool")

B, T = 4, 40


def pool(num=B, **kw):
    return envpool.make_gymnasium("CartPole-v1", num_envs=num, seed=0, **kw)


def policy(params, obs, key):
    # pushes towards the pole's lean (plus noise): long and short episodes, both directions
    noise = jax.random.bernoulli(key, params, obs.shape[:1])
    action = ((obs[:, 2] > 0) ^ noise).astype(jnp.int32)
    return action, {"log_prob": jnp.zeros(obs.shape[0], jnp.float32)}


def cartpole_step(obs, action):
    """gymnasium's CartPole stepped by hand from ``obs``: ``(next_obs, terminated)``."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    env = CartPoleEnv()
    env.reset(seed=0)
    env.state = np.asarray(obs, np.float64)
    nobs, reward, term, _, _ = env.step(int(action))
    assert reward == 1.0
    return nobs, term


def check_cartpole(checks, r):
    checks.generic(r)
    obs, nxt = r["observation"], r["next"]
    nobs, term, trunc = nxt["observation"], nxt["terminated"], nxt["truncated"]
    np.testing.assert_array_equal(nxt["reward"], 1.0)
    for i in range(obs.shape[0]):
        for t in range(obs.shape[1]):
            want, want_term = cartpole_step(obs[i, t], r["action"][i, t])
            # the stored next observation is the true successor, also at a done step
            np.testing.assert_allclose(nobs[i, t], want, rtol=1e-4, atol=1e-5)
            assert bool(term[i, t]) == want_term, (i, t)
    # after a done step, a reset observation (CartPole resets uniformly in [-0.05, 0.05])
    after = nxt["done"][:, :-1]
    assert (np.abs(obs[:, 1:][after]) <= 0.05).all()
    assert term.any() and not trunc.any()  # CartPole-v1's limit is 500 steps


def collect(hc, n, params):
    state = hc.init(jax.random.key(0))
    out = []
    for _ in range(n):
        state, b = hc.collect(state, params)
        out.append(jax.tree.map(np.asarray, b))
    return state, out


@pytest.mark.parametrize("groups", [1, 2])
def test_envpool_cartpole_transitions_are_real(groups, checks):
    env = pool() if groups == 1 else [pool(B // 2), pool(B // 2)]
    hc = HostCollector(env, policy, frames_per_batch=B * T)
    try:
        state, batches = collect(hc, 2, 0.3)
    finally:
        hc.close()
    assert all(g.envpool for g in hc.groups)
    b = batches[0]
    assert b["observation"].shape == (B, T, 4) and b["observation"].dtype == np.float32
    assert b["action"].dtype == np.int32 and b["log_prob"].shape == (B, T)
    r = checks.rows(batches, 2)
    check_cartpole(checks, r)
    assert int(state.next_traj_id) == B + r["next"]["done"].sum()


def test_envpool_random_actions_and_max_frames_per_traj(checks):
    hc = HostCollector(pool(), None, frames_per_batch=B * T, max_frames_per_traj=7)
    try:
        _, batches = collect(hc, 2, None)
    finally:
        hc.close()
    r = checks.rows(batches, 2)
    checks.generic(r)
    trunc = r["next"]["truncated"]
    # CartPole-v1's own limit (500) is never reached here: every truncation is the collector's
    np.testing.assert_array_equal(trunc, r["step_count"] + 1 == 7)
    assert trunc.any() and r["step_count"].max() < 7
    assert set(np.unique(r["action"]).tolist()) == {0, 1}
    # the collector's own truncation resets the env: the next step starts a fresh episode
    after = r["next"]["done"][:, :-1]
    assert (np.abs(r["observation"][:, 1:][after]) <= 0.05).all()


def test_envpool_async_pool_refused():
    p = pool(num=4, batch_size=2)
    try:
        with pytest.raises(ValueError, match="batch_size"):
            HostCollector(p, None, frames_per_batch=8)
    finally:
        p.close()
