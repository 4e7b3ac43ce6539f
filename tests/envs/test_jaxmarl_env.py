"""``JaxMARLEnv``: TorchRL's MARL layout checked exactly on the ground-truth multi-agent env,
groups, bad input, and real JaxMARL envs (homogeneous and heterogeneous MPE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from marl_checks import check_marl, gt_policy, run

import rlbuf
from rlbuf.envs import GroundTruthMARLEnv, JaxMARLEnv, make

HET = ("adversary_0", "agent_0", "agent_1")


@pytest.fixture(scope="module")
def gt():
    return GroundTruthMARLEnv(min_length=3, max_length=6, max_steps=5, early_agent="agent_1", early_step=2)


@pytest.fixture(scope="module")
def env(gt):
    return JaxMARLEnv(gt)


def test_layout_exact_with_policy(gt, env):
    assert env.groups == {"agents": ("agent_0", "agent_1", "agent_2")}
    spaces = env.action_space().spaces
    c = rlbuf.Collector(env, gt_policy(spaces), frames_per_batch=2 * 9, num_envs=2)
    r, batches = run(c, 3)
    b = batches[0]
    assert b["agents"]["observation"].shape == (2, 9, 3, 4) and b["agents"]["action"].shape == (2, 9, 3)
    assert b["next"]["agents"]["reward"].shape == (2, 9, 3) and b["next"]["done"].shape == (2, 9)
    assert set(b) == {"agents", "next", "collector", "step_count"}
    assert set(b["agents"]) == {"observation", "action", "action_mask"}
    assert set(b["next"]) == {"agents", "reward", "done", "terminated", "truncated", "episode_reward"}
    check_marl(r, gt, env.groups, spaces)
    nxt = r["next"]
    # both kinds of episode end and the early agent's own termination occur
    assert nxt["terminated"].any() and nxt["truncated"].any()
    assert (nxt["agents"]["done"][:, :, 1] & ~nxt["done"]).any()


def test_random_actions_respect_masks_and_max_frames(gt, env):
    c = rlbuf.Collector(env, None, frames_per_batch=3 * 8, num_envs=3, max_frames_per_traj=4)
    r, _ = run(c, 2, key=1)
    check_marl(r, gt, env.groups, env.action_space().spaces, random=True, max_frames_per_traj=4)
    assert len(np.unique(r["agents"]["action"])) == 3  # random, not constant


def test_heterogeneous_groups_and_world_state():
    gt = GroundTruthMARLEnv(HET, min_length=2, max_length=4, max_steps=100, early_agent="agent_0",
                            early_step=1, world_state=True)
    env = JaxMARLEnv(gt)
    assert env.groups == {"adversary": ("adversary_0",), "agent": ("agent_0", "agent_1")}
    spaces = env.action_space().spaces
    assert spaces["adversary"].n == 4 and spaces["agent"].n == 3
    c = rlbuf.Collector(env, gt_policy(spaces), frames_per_batch=2 * 6, num_envs=2)
    r, _ = run(c, 2)
    assert r["adversary"]["observation"].shape[2:] == (1, 5) and r["agent"]["observation"].shape[2:] == (2, 4)
    check_marl(r, gt, env.groups, spaces)
    # the non-agent observation sits at the root
    np.testing.assert_array_equal(r["world_state"][..., 1], r["agent"]["observation"][:, :, 0, 2])
    np.testing.assert_array_equal(r["next"]["world_state"][..., 1], r["world_state"][..., 1] + 1)


def test_group_maps():
    gt = GroundTruthMARLEnv(HET, masks=False)
    assert JaxMARLEnv(gt, "per_agent").groups == {a: (a,) for a in HET}
    env = JaxMARLEnv(gt, {"team": ["agent_1", "agent_0"], "adv": ["adversary_0"]})
    assert env.groups == {"team": ("agent_1", "agent_0"), "adv": ("adversary_0",)}
    c = rlbuf.Collector(env, gt_policy(env.action_space().spaces), frames_per_batch=4, num_envs=1)
    r, _ = run(c, 1)
    np.testing.assert_array_equal(r["team"]["observation"][..., 0], np.broadcast_to([2, 1], (1, 4, 2)))  # agent indices
    assert "action_mask" not in r["team"]
    with pytest.raises(ValueError, match="leaves out agents \\['agent_1'\\]"):
        JaxMARLEnv(gt, {"a": ["adversary_0", "agent_0"]})
    with pytest.raises(ValueError, match="names agent 'agent_0' twice"):
        JaxMARLEnv(gt, {"a": ["adversary_0", "agent_0"], "b": ["agent_0", "agent_1"]})
    with pytest.raises(ValueError, match="agent 'nobody'"):
        JaxMARLEnv(gt, {"a": ["nobody"]})
    with pytest.raises(ValueError, match="group 'all'.*differ"):
        JaxMARLEnv(gt, {"all": list(HET)})
    with pytest.raises(ValueError, match="group_map must be"):
        JaxMARLEnv(gt, "by_class")
    with pytest.raises(ValueError, match="'next'"):
        JaxMARLEnv(gt, {"next": list(HET[1:]), "adv": ["adversary_0"]})


@pytest.mark.parametrize("bad, match", [
    (lambda o: {"agent_0": jnp.zeros((2, 3), jnp.int32)}, "group 'agent_0'.*agent of group 'agents'"),
    (lambda o: {"agents": jnp.zeros((2, 3), jnp.int32), "x": jnp.zeros(2)}, "group 'x'"),
    (lambda o: {}, "no action for group 'agents'"),
    (lambda o: {"agents": jnp.zeros((2, 2), jnp.int32)}, "group 'agents'.*shape \\(2, 2\\), expected \\(2, 3\\)"),
    (lambda o: {"agents": jnp.zeros((2, 3), jnp.float32)}, "group 'agents' has dtype float32"),
    (lambda o: jnp.zeros((2, 3), jnp.int32), "returns \\{group: action\\}"),
])
def test_bad_policy_output_raises_at_trace_time(env, bad, match):
    c = rlbuf.Collector(env, lambda p, o, k: bad(o), frames_per_batch=4, num_envs=2)
    state = jax.eval_shape(c.init, jax.random.key(0))
    with pytest.raises((ValueError, TypeError), match=match):
        jax.eval_shape(c.collect, state)


def test_recurrent_carry(gt, env):
    spaces = env.action_space().spaces
    base = gt_policy(spaces)

    def policy(params, obs, key, carry):  # the carry counts the steps of the episode
        return base(params, obs, key), {"seen": carry}, carry + 1

    c = rlbuf.Collector(env, policy, frames_per_batch=2 * 8, num_envs=2,
                        policy_carry=lambda n: jnp.zeros((n,), jnp.int32))
    r, _ = run(c, 2)
    np.testing.assert_array_equal(r["seen"], r["step_count"])
    np.testing.assert_array_equal(r["is_init"], r["step_count"] == 0)


def test_init_random_frames_then_policy(gt, env):
    """Random and policy batches share one structure (the two branches of the collector's cond)."""
    spaces = env.action_space().spaces
    c = rlbuf.Collector(env, gt_policy(spaces), frames_per_batch=2 * 6, num_envs=2, init_random_frames=12)
    _, (b0, b1) = run(c, 2)
    for b in (b0, b1):
        a, m = b["agents"]["action"], b["agents"]["action_mask"]
        assert np.take_along_axis(m, a[..., None].astype(np.int64), -1).all()
    o = b1["agents"]["observation"]
    np.testing.assert_array_equal(b1["agents"]["action"], (o[..., 2] + o[..., 0]) % 3)
    o = b0["agents"]["observation"]
    assert (b0["agents"]["action"] != (o[..., 2] + o[..., 0]) % 3).any()


def test_single_env():
    gt = GroundTruthMARLEnv(max_steps=4)
    env = JaxMARLEnv(gt)
    c = rlbuf.Collector(env, None, frames_per_batch=6)
    _, (b,) = run(c, 1)
    assert b["agents"]["observation"].shape == (6, 3, 4) and b["next"]["agents"]["done"].shape == (6, 3)
    assert b["next"]["done"].shape == (6,) and b["next"]["done"].any()


try:
    import jaxmarl  # noqa: F401
    HAS_JAXMARL = True
except ImportError:  # jaxmarl needs python >= 3.11
    HAS_JAXMARL = False
needs_jaxmarl = pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl is not installed")


@needs_jaxmarl
def test_mpe_spread_homogeneous_truncated():
    with pytest.raises(ValueError, match="unknown JaxMARL env 'MPE_nope'"):
        make("jaxmarl:MPE_nope")
    env, params = make("jaxmarl:MPE_simple_spread_v3", max_steps=5)
    assert env.groups == {"agents": ("agent_0", "agent_1", "agent_2")} and env._masks is None
    c = rlbuf.Collector(env, None, frames_per_batch=2 * 8, num_envs=2, env_params=params)
    r, _ = run(c, 2)
    nxt = r["next"]
    assert r["agents"]["observation"].shape[2:] == (3, 18) and r["agents"]["action"].shape[2:] == (3,)
    # MPE's episodes end only at its time limit (max_steps + 1 steps): truncations only
    np.testing.assert_array_equal(nxt["done"], r["step_count"] == 5)
    assert not nxt["terminated"].any() and nxt["truncated"].any()
    np.testing.assert_array_equal(nxt["agents"]["truncated"], np.repeat(nxt["done"][..., None], 3, -1))
    assert not nxt["agents"]["terminated"].any()
    np.testing.assert_allclose(nxt["reward"], nxt["agents"]["reward"].sum(-1), rtol=1e-5)
    # the stored next observation at the last step is the true final one (positions move on)
    cont = ~nxt["done"][:, :-1]
    o, no = r["agents"]["observation"], nxt["agents"]["observation"]
    np.testing.assert_array_equal(o[:, 1:][cont], no[:, :-1][cont])
    assert not np.allclose(o[:, 1:][~cont], no[:, :-1][~cont])


@needs_jaxmarl
def test_mpe_adversary_heterogeneous():
    env, params = make("jaxmarl:MPE_simple_adversary_v3")
    assert env.groups == {"adversary": ("adversary_0",), "agent": ("agent_0", "agent_1")}
    spaces = env.action_space().spaces

    def policy(p, obs, key):
        return ({g: jnp.zeros(obs[g]["observation"].shape[:2], spaces[g].dtype) for g in spaces},
                {"value": obs["agent"]["observation"][:, 0, 0]})

    c = rlbuf.Collector(env, policy, frames_per_batch=2 * 4, num_envs=2, env_params=params)
    r, _ = run(c, 1)
    assert r["adversary"]["observation"].shape == (2, 4, 1, 8) and r["agent"]["observation"].shape == (2, 4, 2, 10)
    assert r["value"].shape == (2, 4) and r["next"]["agent"]["reward"].shape == (2, 4, 2)
