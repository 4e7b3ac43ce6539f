"""``PettingZooEnvs`` through ``HostCollector``: the MARL layout on a ground-truth ParallelEnv
whose agent ``agent_1`` leaves early (masked and done from then on, as TorchRL does), random
actions within the masks, groups, bad actions, and a real PettingZoo env (classic RPS)."""

import functools

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from suite_checks import collector_checks

import rlbuf
from rlbuf.envs import PettingZooEnvs

pytest.importorskip("pettingzoo")
from pettingzoo import ParallelEnv  # noqa: E402

I, EP, STEP = 0, 1, 2


class LeavingEnv(ParallelEnv):
    """Agent ``i`` observes ``[i, episode, step]``; ``agent_1`` terminates at step ``leave``
    (and leaves); the episode is truncated at step ``length`` (all remaining agents);
    reward = action; ``infos[agent]["action_mask"]``: ``a <= (step + i) % 3``."""

    metadata = {"name": "leaving_v0"}

    def __init__(self, length=4, leave=2, seed_offset=0):
        self.possible_agents = ["agent_0", "agent_1", "agent_2"]
        self.length, self.leave = length, leave
        self.episode = seed_offset * 1000

    def observation_space(self, agent):
        return gymnasium.spaces.Box(0, 10_000, (3,), np.int64)

    def action_space(self, agent):
        return gymnasium.spaces.Discrete(3)

    def _obs(self):
        return {a: np.array([self.possible_agents.index(a), self.episode, self.t]) for a in self.agents}

    def _infos(self):
        return {a: {"action_mask": np.arange(3) <= (self.t + self.possible_agents.index(a)) % 3}
                for a in self.agents}

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.episode += 1
        self.t = 0
        return self._obs(), self._infos()

    def step(self, actions):
        assert set(actions) == set(self.agents), (actions, self.agents)
        for a, x in actions.items():  # the collector sends only allowed actions in these tests
            assert x <= (self.t + self.possible_agents.index(a)) % 3
        self.t += 1
        rew = {a: float(actions[a]) for a in self.agents}
        term = {a: a == "agent_1" and self.t >= self.leave for a in self.agents}
        trunc = {a: self.t >= self.length for a in self.agents}
        obs, infos = self._obs(), self._infos()
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, infos


def policy(params, obs, key):
    o = obs["agents"]["observation"]
    return {"agents": ((o[..., STEP] + o[..., I]) % 3).astype(jnp.int32)}


@pytest.fixture(scope="module")
def batches():
    envs = PettingZooEnvs([functools.partial(LeavingEnv, seed_offset=i) for i in range(2)])
    hc = rlbuf.HostCollector(envs, policy, frames_per_batch=2 * 7)
    s = hc.init(jax.random.key(0))
    out = []
    for _ in range(2):
        s, b = hc.collect(s)
        out.append(jax.tree.map(np.asarray, b))
    return out


def test_layout_and_leaving_agent(batches):
    b = batches[0]
    assert b["agents"]["observation"].shape == (2, 7, 3, 3) and b["agents"]["action"].shape == (2, 7, 3)
    assert set(b["agents"]) == {"observation", "mask", "action_mask", "action"}
    r = jax.tree.map(lambda *x: np.concatenate(x, axis=1), *batches)
    nxt, g, ng = r["next"], r["agents"], r["next"]["agents"]
    step = g["observation"][:, :, 0, STEP]
    # episodes: 4 steps, truncated; the final observation is kept
    np.testing.assert_array_equal(nxt["done"], step == 3)
    np.testing.assert_array_equal(nxt["truncated"], nxt["done"])
    assert not nxt["terminated"].any()
    np.testing.assert_array_equal(ng["observation"][:, :, 0, STEP], step + 1)
    np.testing.assert_array_equal(r["collector"]["traj_ids"], collector_checks.reference_traj_ids(nxt["done"]))
    # agent_1 leaves at step 2: masked (zero observation, no reward) and terminated from then on
    gone = step >= 2
    np.testing.assert_array_equal(g["mask"][:, :, 1], ~gone)
    assert (g["observation"][:, :, 1][step >= 3] == 0).all() and (ng["reward"][:, :, 1][gone] == 0).all()
    np.testing.assert_array_equal(g["observation"][:, :, 1, STEP][step == 2], 2)  # its final observation
    np.testing.assert_array_equal(ng["terminated"][:, :, 1], step + 1 >= 2)
    np.testing.assert_array_equal(ng["truncated"][:, :, 1], np.zeros_like(gone))
    np.testing.assert_array_equal(ng["done"][:, :, [0, 2]], np.repeat(nxt["done"][..., None], 2, -1))
    np.testing.assert_array_equal(ng["truncated"][:, :, [0, 2]], ng["done"][:, :, [0, 2]])
    # rewards equal actions (present agents), the team reward is their sum
    act = g["action"]
    np.testing.assert_array_equal(ng["reward"], np.where(g["mask"], act, 0))
    np.testing.assert_allclose(nxt["reward"], ng["reward"].sum(-1))
    live = g["mask"]
    np.testing.assert_array_equal(act[live], ((g["observation"][..., STEP] + g["observation"][..., I]) % 3)[live])
    np.testing.assert_array_equal(g["action_mask"][live][:, 0], True)
    assert (g["action_mask"][~live] == False).all()  # noqa: E712


def test_random_actions_respect_masks_and_bad_actions():
    envs = PettingZooEnvs([LeavingEnv] * 2)
    hc = rlbuf.HostCollector(envs, None, frames_per_batch=2 * 6)
    _, b = hc.collect(hc.init(jax.random.key(1)))
    g = b["agents"]
    mask, act = np.asarray(g["action_mask"]), np.asarray(g["action"])
    live = np.asarray(g["mask"])
    assert np.take_along_axis(mask, act[..., None].astype(np.int64), -1)[..., 0][live].all()
    for bad, match in [({"agent_0": jnp.zeros((2, 3), jnp.int32)}, "agent of group 'agents'"),
                       ({"agents": jnp.zeros((2, 2), jnp.int32)}, "group 'agents'.*shape")]:
        hc = rlbuf.HostCollector(PettingZooEnvs([LeavingEnv] * 2), lambda p, o, k, bad=bad: bad, frames_per_batch=4)
        with pytest.raises(ValueError, match=match):
            hc.collect(hc.init(jax.random.key(0)))


def test_groups():
    envs = PettingZooEnvs([LeavingEnv], group_map={"a": ["agent_2"], "b": ["agent_0", "agent_1"]})
    assert envs.groups == {"a": ("agent_2",), "b": ("agent_0", "agent_1")}
    with pytest.raises(ValueError, match="leaves out agents"):
        PettingZooEnvs([LeavingEnv], group_map={"a": ["agent_2"]})


def test_classic_rps_collects():
    from pettingzoo.classic import rps_v2

    envs = PettingZooEnvs([lambda: rps_v2.parallel_env(max_cycles=3)] * 2)
    assert envs.groups == {"agents": ("player_0", "player_1")}
    hc = rlbuf.HostCollector(envs, None, frames_per_batch=2 * 5)
    _, b = hc.collect(hc.init(jax.random.key(0)))
    g = next(iter(envs.groups))
    assert b[g]["observation"].shape == (2, 5, 2) and b["next"][g]["done"].shape == (2, 5, 2)
    done = np.asarray(b["next"]["done"])
    np.testing.assert_array_equal(done, np.asarray(b["step_count"]) == 2)
    np.testing.assert_array_equal(np.asarray(b["next"]["truncated"]), done)
