"""``to_minari``: batches collected by ``rlbuf.Collector`` on the ground-truth env (observation
``[env, episode, step, length]``; env 0 terminates its episodes, env 1 truncates them), and
buffer states, written and opened again with ``minari.load_dataset``; the episodes equal the
collected ones, step for step; the three ``partial`` policies; ``from_minari`` round trip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlbuf
from rlbuf import datasets
from rlbuf.envs import GroundTruthEnv

minari = pytest.importorskip("minari")
B, T = 2, 16


@pytest.fixture(scope="module")
def batches():
    env = GroundTruthEnv(num_actions=3)
    params = env.make_params(B).replace(terminate=jnp.array([True, False]))
    col = rlbuf.Collector(env, frames_per_batch=B * T, num_envs=B, env_params=params)
    collect = jax.jit(col.collect)
    cstate = col.init(jax.random.key(0))
    out = []
    for _ in range(3):
        cstate, batch = collect(cstate, None)
        out.append(jax.device_get(batch))
    return out


def collected_episodes(batches):
    """``{(env, episode): steps}`` from the raw batches (a plain loop over lanes and time), and the
    set of complete ones (from step 0 to a done step)."""
    steps, complete = {}, set()
    for b in batches:
        for lane in range(B):
            for t in range(T):
                o = b["observation"][lane, t]
                key = (int(o[0]), int(o[1]))
                steps.setdefault(key, []).append((lane, b, t))
                if b["next"]["done"][lane, t] and steps[key][0][1]["observation"][lane, steps[key][0][2]][2] == 0:
                    complete.add(key)
    return steps, complete


def check_episode(ep, steps):
    """One loaded episode against the collected steps of the same (env, episode)."""
    obs = np.asarray(ep.observations)
    assert len(ep) == len(steps) and obs.shape == (len(steps) + 1, 4)
    for k, (lane, b, t) in enumerate(steps):
        np.testing.assert_array_equal(obs[k], b["observation"][lane, t])
        np.testing.assert_array_equal(obs[k + 1], b["next"]["observation"][lane, t])
        assert ep.actions[k] == b["action"][lane, t]
        assert ep.rewards[k] == b["next"]["reward"][lane, t]
        assert ep.terminations[k] == b["next"]["terminated"][lane, t]
        if k < len(steps) - 1:
            assert ep.truncations[k] == b["next"]["truncated"][lane, t]


def test_batches_round_trip_drop(batches, minari_root):
    steps, complete = collected_episodes(batches)
    datasets.to_minari("rlbuf/gt-drop-v0", batches, partial="drop")
    ds = minari.load_dataset("rlbuf/gt-drop-v0")
    got = set()
    for ep in ds.iterate_episodes():
        o = np.asarray(ep.observations)
        key = (int(o[0, 0]), int(o[0, 1]))
        got.add(key)
        check_episode(ep, steps[key])
        np.testing.assert_array_equal(o[:, 2], np.arange(len(ep) + 1))  # a whole episode, reset to end
        assert o[0, 3] == len(ep)
        assert (ep.terminations[-1], ep.truncations[-1]) == ((True, False) if key[0] == 0 else (False, True))
    assert got == complete and len(complete) > 4
    assert isinstance(ds.action_space, __import__("gymnasium").spaces.Discrete)


def test_partial_truncate_and_keep(batches, minari_root):
    steps, complete = collected_episodes(batches)
    for partial in ("truncate", "keep"):
        ds = datasets.to_minari(f"rlbuf/gt-{partial}-v0", batches, partial=partial)
        assert ds.total_episodes == len(steps)  # every trajectory, finished or not
        for ep in ds.iterate_episodes():
            o = np.asarray(ep.observations)
            key = (int(o[0, 0]), int(o[0, 1]))
            check_episode(ep, steps[key])
            ended = bool(ep.terminations[-1] or ep.truncations[-1])
            assert ended == (key in complete or partial == "truncate")
    with pytest.raises(ValueError, match="partial must be"):
        datasets.to_minari("rlbuf/x-v0", batches, partial="cut")


def test_buffer_state_oldest_first_and_from_minari_round_trip(batches, minari_root):
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(B * 20, ndim=2), batch_size=4)
    state = rb.init(batches[0])
    for b in batches:  # 48 steps per lane into 20 slots: wrapped
        state = rb.add(state, b)
    lanes = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1)[:, -20:], *batches)  # what remains, oldest first
    ds = datasets.to_minari("rlbuf/gt-buffer-v0", state, partial="keep")
    back = datasets.from_minari(ds)
    # Every stored transition comes back once, each lane's steps in time order.
    n = B * 20
    assert back["observation"].shape == (n, 4)
    for lane in range(B):
        mine = back["observation"][back["observation"][:, 0] == lane]
        np.testing.assert_array_equal(np.sort(mine.view("i4,i4,i4,i4"), axis=0),
                                      np.sort(lanes["observation"][lane].view("i4,i4,i4,i4"), axis=0))
    # Within an episode the next observation is the following observation (reading order is right).
    same = back["collector"]["traj_ids"][1:] == back["collector"]["traj_ids"][:-1]
    np.testing.assert_array_equal(back["next"]["observation"][:-1][same], back["observation"][1:][same])
    # "drop" removes the oldest trajectory of each lane (its start was overwritten: step_count > 0).
    dropped = datasets.to_minari("rlbuf/gt-buffer-drop-v0", state, partial="drop")
    for ep in dropped.iterate_episodes():
        assert np.asarray(ep.observations)[0, 2] == 0


def test_single_batch_dict_observations_and_errors(minari_root):
    n = 6
    batch = {
        "observation": {"a": np.arange(n, dtype=np.float32)[:, None], "b": np.arange(n, dtype=np.int32)},
        "action": np.zeros((n, 2), np.float32),
        "next": {"observation": {"a": np.arange(1, n + 1, dtype=np.float32)[:, None],
                                 "b": np.arange(1, n + 1, dtype=np.int32)},
                 "reward": np.ones(n, np.float32), "terminated": np.arange(n) == 2,
                 "truncated": np.arange(n) == 5},
        "collector": {"traj_ids": np.array([0, 0, 0, 1, 1, 1], np.int32)},
    }
    ds = datasets.to_minari("rlbuf/dict-v0", batch)
    back = datasets.from_minari("rlbuf/dict-v0")
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        y = back
        for p in path:
            y = y[p.key]
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    assert ds.total_episodes == 2
    bad = dict(batch, collector={})
    with pytest.raises(KeyError, match="traj_ids"):
        datasets.to_minari("rlbuf/bad-v0", bad)
    with pytest.raises(TypeError, match="BufferState"):
        datasets.to_minari("rlbuf/bad-v0", 3)


def test_compact_next_buffer_exports_the_rebuilt_next_observations(batches, minari_root):
    """Issue 26 item 10: a compact_next buffer exports exactly what the same uncompressed buffer
    does; episodes whose final observation the table lost are skipped with a warning, never
    written with a wrong one."""
    states = {}
    for name, kw in (("plain", {}), ("compact", dict(compact_next=True)),
                     ("lossy", dict(compact_next=True, final_obs_size=2))):
        rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(B * 20, ndim=2, **kw), batch_size=4)
        state = rb.init(batches[0])
        for b in batches:
            state = rb.add(state, b)
        states[name] = state
    assert int(states["lossy"].storage.lost) > 0
    plain = datasets.from_minari(datasets.to_minari("rlbuf/gt-plain-v0", states["plain"], partial="keep"))
    comp = datasets.from_minari(datasets.to_minari("rlbuf/gt-compact-v0", states["compact"], partial="keep"))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(comp)):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="trajectories skipped.*final_obs_size"):
        ds = datasets.to_minari("rlbuf/gt-lossy-v0", states["lossy"], partial="keep")
    steps, _ = collected_episodes(batches)
    assert 0 < ds.total_episodes < len(plain["collector"]["traj_ids"])
    for ep in ds.iterate_episodes():
        o = np.asarray(ep.observations)
        key = (int(o[0, 0]), int(o[0, 1]))
        check_episode(ep, steps[key][-len(ep):])  # (a wrapped lane keeps an episode's tail)
