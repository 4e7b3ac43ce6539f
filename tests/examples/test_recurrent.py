"""The recurrent example (``python -m rlbuf.examples.recurrent``): a fast smoke test of both
agents, and the recurrent-state plumbing through the env (what the learner's stored-state
unroll relies on) checked against a step-by-step recomputation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.examples import recurrent

SMALL = dataclasses.replace(
    recurrent.RecurrentConfig(), total_frames=1_024, num_envs=4, steps_per_collect=8, log_every=512,
    eval_every=512, learning_starts=256, buffer_size=1_024, num_slices=4, slice_len=8, burn_in=2, hidden=16,
    eval_episodes=4,
)


@pytest.fixture(scope="module", params=["gru", "none"])
def trained(request):
    cfg = dataclasses.replace(SMALL, memory=request.param)
    return recurrent.train(cfg, quiet=True)


def test_smoke_trains(trained, capsys):
    agent, state = trained["agent"], trained["state"]
    assert len(trained["losses"]) == 2 and all(np.isfinite(trained["losses"]))
    assert np.isfinite(trained["final_return"]) and trained["final_return"] > 0
    assert trained["curve"][0] == [512, 1024]
    # learning starts with the collect reaching 256 frames: (1024 - 256) / 32 + 1 collects, 2 updates each
    assert int(state.updates) == 2 * ((1024 - 256) // 32 + 1)
    assert agent.chunk._cache_size() == 1
    # the buffer is donated to the jitted chunk (on a copy: the fixture's state is shared)
    copy = jax.tree.map(jnp.copy, state)
    old = jax.tree.leaves(copy.buffer.storage)[0]
    agent.chunk(copy)
    assert old.is_deleted()


def test_slices_are_trajectory_consistent(trained):
    """Slices never cross an episode: one trajectory id per (unpadded) slice, and each
    step's stored recurrent state is the next step's (the env hands back what the policy
    returned)."""
    agent, state = trained["agent"], trained["state"]
    _, batch, info = jax.jit(agent.rb.sample)(state.buffer, jax.random.key(0))
    batch, mask = jax.device_get((batch, info["mask"]))
    ids = batch["collector"]["traj_ids"]
    for i in range(ids.shape[0]):
        assert len(set(ids[i][mask[i]].tolist())) == 1
    assert mask[:, 0].all()
    # next obs of step t is obs of step t+1 inside a slice
    both = mask[:, 1:] & mask[:, :-1]
    np.testing.assert_array_equal(batch["next"]["observation"][:, :-1][both],
                                  batch["observation"]["observation"][:, 1:][both])


def test_stored_recurrent_state_matches_recomputation():
    """The collector + ``RecurrentStatePrimer`` store, at every step, the hidden state the GRU had
    before that step: zeros at an episode's first step, then the state after the previous one."""
    cfg = dataclasses.replace(SMALL, memory="gru")
    agent = recurrent.RecurrentDQN(cfg)
    params = agent.net.init(jax.random.key(2))
    collect = jax.jit(agent.collector.collect)
    cstate = agent.collector.init(jax.random.key(3))
    batches = []
    for _ in range(4):  # 32 steps: several CartPole episodes end under a 50%-random policy
        cstate, b = collect(cstate, {"q": params, "eps": jnp.float32(0.5)})
        batches.append(jax.device_get(b))
    cat = lambda *xs: np.concatenate(xs, axis=1)  # noqa: E731
    b = jax.tree.map(cat, *batches)
    obs, h_stored = b["observation"]["observation"], b["observation"]["recurrent_state"]
    done = b["next"]["done"]
    step = jax.jit(agent.net.step)
    h = np.zeros((cfg.num_envs, cfg.hidden), np.float32)
    for t in range(obs.shape[1]):
        np.testing.assert_allclose(h_stored[:, t], h, rtol=1e-5, atol=1e-5)
        _, h_new = step(params, h, obs[:, t])
        np.testing.assert_allclose(b["action"]["recurrent_state"][:, t], h_new, rtol=1e-5, atol=1e-5)
        h = np.where(done[:, t, None], 0.0, np.asarray(h_new))
    assert done.any()
