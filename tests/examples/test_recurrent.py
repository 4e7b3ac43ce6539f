"""The R2D2-style recurrent example (``python -m rlbuf.examples.recurrent``): a fast smoke test
of both agents, the collector's stored carry checked against a step-by-step recomputation, and
the learner's burn-in unroll from the stored carry checked against the actor's Q-values."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.examples import recurrent

SMALL = dataclasses.replace(
    recurrent.RecurrentConfig(), total_frames=1_024, num_envs=4, steps_per_collect=8, log_every=512,
    eval_every=512, learning_starts=256, buffer_size=1_024, num_slices=4, slice_len=6, burn_in=3, n_steps=2,
    hidden=16, eval_episodes=4,
)


@pytest.fixture(scope="module", params=["gru", "none"])
def trained(request):
    cfg = dataclasses.replace(SMALL, memory=request.param)
    return recurrent.train(cfg, quiet=True)


def test_smoke_trains(trained):
    agent, state = trained["agent"], trained["state"]
    assert len(trained["losses"]) == 2 and all(np.isfinite(trained["losses"]))
    assert np.isfinite(trained["final_return"]) and trained["final_return"] > 0
    assert trained["curve"][0] == [512, 1024]
    # learning starts with the collect reaching 256 frames: (1024 - 256) / 32 + 1 collects, 2 updates each
    assert int(state.updates) == 2 * ((1024 - 256) // 32 + 1)
    assert agent.chunk._cache_size() == 1
    # only the learner's keys are stored, the carry among them
    stored = state.buffer.storage
    assert set(stored) == {"observation", "action", "is_init", "next", "collector"}
    assert stored["collector"]["carry"].shape[-1] == agent.net.carry_size
    # the buffer is donated to the jitted chunk (on a copy: the fixture's state is shared)
    copy = jax.tree.map(jnp.copy, state)
    old = jax.tree.leaves(copy.buffer.storage)[0]
    agent.chunk(copy)
    assert old.is_deleted()


def test_sequences_are_trajectory_consistent(trained):
    """Burn-in sequences never cross an episode: one trajectory id per sequence (real steps),
    real burn-in steps right before the learning steps, padding only at the front (burn-in) or
    at the end (a short episode), and the next observation of step t is the observation of t + 1."""
    agent, state = trained["agent"], trained["state"]
    b, n = SMALL.burn_in, SMALL.slice_len
    _, batch, info = jax.jit(agent.rb.sample)(state.buffer, jax.random.key(0))
    batch, mask, learn = jax.device_get((batch, info["mask"], info["learning_mask"]))
    assert mask.shape == learn.shape == (SMALL.num_slices, b + n)
    assert not learn[:, :b].any() and learn[:, b].all()
    np.testing.assert_array_equal(learn, mask & (np.arange(b + n) >= b))
    ids = batch["collector"]["traj_ids"]
    for i in range(ids.shape[0]):
        assert len(set(ids[i][mask[i]].tolist())) == 1
        real = np.flatnonzero(mask[i])
        np.testing.assert_array_equal(real, np.arange(real[0], real[-1] + 1))  # contiguous
        assert batch["is_init"][i, real[0]]  # the sampler marks the first real step
    both = mask[:, 1:] & mask[:, :-1]
    np.testing.assert_array_equal(batch["next"]["observation"][:, :-1][both], batch["observation"][:, 1:][both])


@pytest.fixture(scope="module")
def collected():
    """Four collects of the small GRU agent with fixed params (eps 0.5: several episodes end)."""
    agent = recurrent.RecurrentDQN(dataclasses.replace(SMALL, memory="gru"))
    params = agent.net.init(jax.random.key(2))
    collect = jax.jit(agent.collector.collect)
    cstate = agent.collector.init(jax.random.key(3))
    batches = []
    for _ in range(4):
        cstate, b = collect(cstate, {"q": params, "eps": jnp.float32(0.5)})
        batches.append(b)
    return agent, params, batches


def test_stored_carry_matches_recomputation(collected):
    """The collector stores, at every step, the GRU state the actor had before it: zeros at an
    episode's first step (``is_init``), then the state after the previous step."""
    agent, params, batches = collected
    b = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *jax.device_get(batches))
    obs, h_stored, done = b["observation"], b["collector"]["carry"], b["next"]["done"]
    step = jax.jit(agent.net.step)
    h = np.zeros((SMALL.num_envs, SMALL.hidden), np.float32)
    for t in range(obs.shape[1]):
        np.testing.assert_allclose(h_stored[:, t], h, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(b["is_init"][:, t], ~h.any(axis=1) if t else np.ones(SMALL.num_envs, bool))
        _, h_new = step(params, h, obs[:, t])
        h = np.where(done[:, t, None], 0.0, np.asarray(h_new))
    assert done.any()


def test_burn_in_unroll_starts_from_the_stored_carry(collected):
    """With the actor's params, the learner's unroll (stored state of the sequence's first real
    step, burn-in, learning steps, one step past) reproduces the actor's Q-values: ``q`` at every
    learning step, ``q_next`` at every learning step followed by a real step."""
    agent, params, batches = collected
    rb = agent.rb
    state = rb.init(batches[0])
    for bt in batches:
        state = rb.add(state, bt)
    b = SMALL.burn_in
    for seed in range(3):
        _, batch, info = jax.jit(rb.sample)(state, jax.random.key(seed))
        q, q_next = jax.jit(agent.sequence_q)(params, batch, info["mask"])
        # the actor's Q at each step: one GRU step from the stored carry
        q_actor, _ = agent.net.step(params, batch["collector"]["carry"], batch["observation"])
        learn = np.asarray(info["learning_mask"][:, b:])
        np.testing.assert_allclose(np.asarray(q)[learn], np.asarray(q_actor[:, b:])[learn], rtol=1e-4, atol=1e-5)
        follow = learn[:, :-1] & learn[:, 1:]
        np.testing.assert_allclose(np.asarray(q_next[:, :-1])[follow], np.asarray(q_actor[:, b + 1:])[follow],
                                   rtol=1e-4, atol=1e-5)
        assert learn.sum() > 0 and np.asarray(info["mask"])[:, :b].any()  # real burn-in steps were used
