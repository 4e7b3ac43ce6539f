"""Hypothesis properties of ``rlbuf.datasets`` against plain-numpy reference models:

- reading: random episode lengths and endings (terminated / truncated / neither), random chunk
  sizes: the chunks are the reference transitions, in order, cut every ``chunk_size``;
- writing: random ``[B, T]`` collections (random episode lengths per lane, a global id counter,
  split into 1-3 successive batches) and a random ``partial`` policy: the loaded episodes are the
  reference's, in traj-id order, step for step.
"""

from __future__ import annotations

import itertools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf import datasets

minari = pytest.importorskip("minari")
_IDS = itertools.count()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("minari_props")


def _write(root, episodes):
    from minari.data_collector import EpisodeBuffer

    bufs = [EpisodeBuffer(observations=e["obs"], actions=e["act"], rewards=e["rew"], terminations=e["term"],
                          truncations=e["trunc"]) for e in episodes]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(
            f"prop/read{next(_IDS)}-v0", bufs, observation_space=gym.spaces.Box(-1, 1e6, (2,), np.float32),
            action_space=gym.spaces.Discrete(4))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.sampled_from(["term", "trunc", "none"])), min_size=1, max_size=6),
       st.integers(1, 25), st.integers(0, 2**16))
def test_read_chunks_equal_reference(root, episodes, chunk, seed):
    rng = np.random.default_rng(seed)
    eps, rows = [], []
    for i, (t, end) in enumerate(episodes):
        obs = np.stack([np.full(t + 1, i), np.arange(t + 1)], axis=1).astype(np.float32)
        act, rew = rng.integers(0, 4, t), rng.standard_normal(t)
        term, trunc = np.zeros(t, bool), np.zeros(t, bool)
        if end != "none":
            (term if end == "term" else trunc)[-1] = True
        eps.append(dict(obs=obs, act=act, rew=rew, term=term, trunc=trunc))
        for s in range(t):  # the reference: one row per transition
            rows.append((obs[s], act[s], obs[s + 1], np.float32(rew[s]), term[s], trunc[s], term[s] | trunc[s], i))
    ds = _write(root, eps)
    parts = list(datasets.iter_minari(ds, chunk_size=chunk))
    n = len(rows)
    assert [len(p["action"]) for p in parts] == [min(chunk, n - k) for k in range(0, n, chunk)]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("observation", "action")}
    nxt = {k: np.concatenate([p["next"][k] for p in parts]) for k in parts[0]["next"]}
    ids = np.concatenate([p["collector"]["traj_ids"] for p in parts])
    for j, (o, a, no, r, te, tr, d, i) in enumerate(rows):
        np.testing.assert_array_equal(cat["observation"][j], o)
        assert cat["action"][j] == a and ids[j] == i
        np.testing.assert_array_equal(nxt["observation"][j], no)
        assert (nxt["reward"][j], nxt["terminated"][j], nxt["truncated"][j], nxt["done"][j]) == (r, te, tr, d)


def _collect(rng, lanes: int, t_len: int):
    """A ``[B, T]`` collection in the collectors' layout, by a plain loop: per lane, episodes of
    random length; ids from one global counter (lane ``i`` starts with ``i``); ``step_count``."""
    b = {"observation": np.zeros((lanes, t_len, 2), np.float32), "action": rng.integers(0, 4, (lanes, t_len)),
         "step_count": np.zeros((lanes, t_len), np.int32),
         "next": {"observation": np.zeros((lanes, t_len, 2), np.float32),
                  "reward": rng.standard_normal((lanes, t_len)).astype(np.float32),
                  "terminated": np.zeros((lanes, t_len), bool), "truncated": np.zeros((lanes, t_len), bool)},
         "collector": {"traj_ids": np.zeros((lanes, t_len), np.int32)}}
    ids, step, left = list(range(lanes)), [0] * lanes, [int(rng.integers(1, 7)) for _ in range(lanes)]
    nxt = lanes
    for t in range(t_len):
        for lane in range(lanes):
            b["observation"][lane, t] = (ids[lane], step[lane])
            b["step_count"][lane, t] = step[lane]
            b["collector"]["traj_ids"][lane, t] = ids[lane]
            step[lane] += 1
            left[lane] -= 1
            b["next"]["observation"][lane, t] = (ids[lane], step[lane])
            if left[lane] == 0:
                b["next"]["terminated" if rng.random() < 0.5 else "truncated"][lane, t] = True
                ids[lane], step[lane], left[lane] = nxt, 0, int(rng.integers(1, 7))
                nxt += 1
    return b


def _reference(b, partial):
    """``{id: (obs [T+1], actions, rewards, term, trunc)}`` of the episodes to write, by a loop."""
    eps = {}
    lanes, t_len = b["action"].shape
    for lane in range(lanes):
        for t in range(t_len):
            i = int(b["collector"]["traj_ids"][lane, t])
            e = eps.setdefault(i, {"obs": [], "act": [], "rew": [], "term": [], "trunc": [],
                                   "start": b["step_count"][lane, t] == 0})
            e["obs"].append(b["observation"][lane, t])
            e["last"] = b["next"]["observation"][lane, t]
            for k, src in (("act", b["action"]), ("rew", b["next"]["reward"]), ("term", b["next"]["terminated"]),
                           ("trunc", b["next"]["truncated"])):
                e[k].append(src[lane, t])
    out = {}
    for i, e in sorted(eps.items()):
        done = e["term"][-1] or e["trunc"][-1]
        if partial == "drop" and not (done and e["start"]):
            continue
        if partial == "truncate" and not done:
            e["trunc"][-1] = True
        out[i] = (np.array(e["obs"] + [e["last"]]), np.array(e["act"]), np.array(e["rew"]), np.array(e["term"]),
                  np.array(e["trunc"]))
    return out


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(2, 14), st.integers(1, 3), st.sampled_from(["truncate", "drop", "keep"]),
       st.integers(0, 2**16))
def test_write_equals_reference(root, lanes, t_len, n_batches, partial, seed):
    b = _collect(np.random.default_rng(seed), lanes, t_len * n_batches)
    split = [{k: (v[:, s * t_len:(s + 1) * t_len] if not isinstance(v, dict) else
                  {kk: vv[:, s * t_len:(s + 1) * t_len] for kk, vv in v.items()}) for k, v in b.items()}
             for s in range(n_batches)]
    ref = _reference(b, partial)
    if not ref:
        with pytest.raises(ValueError, match="no episode"):
            datasets.to_minari("prop/none-v0", split, partial=partial)
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        name = f"prop/write{next(_IDS)}-v0"
        datasets.to_minari(name, split if n_batches > 1 else split[0], partial=partial,
                           action_space=gym.spaces.Discrete(4))
        ds = minari.load_dataset(name)
    got = list(ds.iterate_episodes())
    assert len(got) == len(ref)
    for ep, (i, (obs, act, rew, term, trunc)) in zip(got, ref.items()):
        np.testing.assert_array_equal(ep.observations, obs)
        np.testing.assert_array_equal(ep.actions, act)
        np.testing.assert_array_equal(ep.rewards, rew)
        np.testing.assert_array_equal(ep.terminations, term)
        np.testing.assert_array_equal(ep.truncations, trunc)
