"""The ground-truth env itself: observation layout, lengths, terminated vs truncated."""

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.envs import GroundTruthEnv, GroundTruthParams


def _rollout(env, params, key, n):
    """Python loop over gymnax's own auto-resetting ``step`` (6-tuple protocol)."""
    obs, state = env.reset(key, params)
    out = [obs]
    flags = []
    for i in range(n):
        key, k = jax.random.split(key)
        obs, state, reward, term, trunc, info = env.step(k, state, jnp.int32(1), params)
        flags.append((bool(term), bool(trunc), float(reward), np.asarray(info["final_observation"])))
        out.append(obs)
    return np.stack([np.asarray(o) for o in out]), flags


def test_reset_and_steps(gt_env):
    params = GroundTruthParams(min_length=2, max_length=4, env_id=7)
    obs, flags = _rollout(gt_env, params, jax.random.key(0), 12)
    assert obs.dtype == np.int32 and obs.shape == (13, 4)
    assert (obs[:, 0] == 7).all()
    assert obs[0, 2] == 0 and 2 <= obs[0, 3] <= 4
    for t, (term, trunc, reward, final) in enumerate(flags):
        assert reward == 2.0
        assert not trunc
        np.testing.assert_array_equal(final[[0, 1, 3]], obs[t][[0, 1, 3]])
        assert final[2] == obs[t][2] + 1
        assert term == (final[2] == final[3])
        if term:  # gymnax auto-reset: the returned obs is a new episode
            assert obs[t + 1][2] == 0 and obs[t + 1][1] != obs[t][1]
        else:
            np.testing.assert_array_equal(obs[t + 1], final)


def test_truncate_instead_of_terminate_and_time_limit(gt_env):
    params = GroundTruthParams(min_length=3, max_length=3, terminate=False)
    _, flags = _rollout(gt_env, params, jax.random.key(1), 6)
    assert [f[:2] for f in flags] == [(False, False), (False, False), (False, True)] * 2
    params = GroundTruthParams(min_length=5, max_length=5, max_steps_in_episode=2)
    _, flags = _rollout(gt_env, params, jax.random.key(1), 4)
    assert [f[:2] for f in flags] == [(False, False), (False, True)] * 2


def test_per_env_params_and_length_distribution():
    env = GroundTruthEnv()
    params = env.make_params(4, min_length=2, max_length=6)
    assert params.env_id.tolist() == [0, 1, 2, 3] and params.min_length.shape == (4,)
    keys = jax.random.split(jax.random.key(3), 4)
    obs, _ = jax.vmap(env.reset_env)(keys, params)
    assert obs[:, 0].tolist() == [0, 1, 2, 3]
    lengths = jax.vmap(lambda k: env.reset_env(k, env.default_params)[0][3])(
        jax.random.split(jax.random.key(0), 2000))
    assert set(np.unique(lengths).tolist()) == set(range(3, 9))
