"""The DQN example (``python -m rlbuf.examples.dqn``) and the pure-JAX pieces it is made of.

Reference models: numpy Adam, numpy MLP/GRU and a numpy double-DQN Huber loss; the slow test
trains the real CLI job on a short budget and checks it learns (random CartPole ≈ 22).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.examples import _nets, dqn

# ---------------------------------------------------------------------------- numpy references


def np_mlp(params, x):
    for i, layer in enumerate(params):
        x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(params) - 1:
            x = np.maximum(x, 0)
    return x


def np_gru(p, h, x):
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    gx = x @ np.asarray(p["wx"], np.float64) + np.asarray(p["bx"], np.float64)
    gh = h @ np.asarray(p["wh"], np.float64) + np.asarray(p["bh"], np.float64)
    H = h.shape[-1]
    r = sig(gx[..., :H] + gh[..., :H])
    z = sig(gx[..., H : 2 * H] + gh[..., H : 2 * H])
    n = np.tanh(gx[..., 2 * H :] + r * gh[..., 2 * H :])
    return (1 - z) * n + z * h


def test_mlp_and_gru_match_numpy():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = _nets.mlp_init(k1, (4, 16, 8, 2))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(_nets.mlp_apply)(params, x), np_mlp(params, x), rtol=1e-5, atol=1e-5)
    g = _nets.gru_init(k2, 3, 6)
    h = np.tanh(np.random.default_rng(1).normal(size=(5, 6))).astype(np.float32)
    xs = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(_nets.gru_cell)(g, h, xs), np_gru(g, h, xs), rtol=1e-5, atol=1e-5)


def test_adam_and_clipping_match_numpy():
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)}
    state = _nets.adam_init(params)
    step = jax.jit(lambda g, s, p, lr: _nets.adam_update(_nets.clip_by_global_norm(g, 1.0)[0], s, p, lr))
    ref_p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in ref_p.items()}
    v = {k: np.zeros_like(x) for k, x in ref_p.items()}
    p = params
    for t in range(1, 6):
        grads = {k: rng.normal(size=x.shape).astype(np.float32) * 3 for k, x in params.items()}
        norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
        lr = 0.1 / t
        p, state = step(grads, state, p, jnp.float32(lr))
        for k in ref_p:
            g = grads[k] * min(1.0, 1.0 / norm)
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g**2
            ref_p[k] = ref_p[k] - lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    for k in ref_p:
        np.testing.assert_allclose(p[k], ref_p[k], rtol=1e-4, atol=1e-5)
    assert int(state.count) == 5


@pytest.mark.parametrize("double", [True, False])
def test_loss_matches_numpy(double):
    cfg = dataclasses.replace(dqn.DQNConfig(), double=double)
    agent = dqn.DQN(cfg)
    kp, kt = jax.random.split(jax.random.key(1))
    params = _nets.mlp_init(kp, (4, *cfg.hidden, 2))
    target = _nets.mlp_init(kt, (4, *cfg.hidden, 2))
    rng = np.random.default_rng(3)
    n = 16
    batch = {
        "observation": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, size=n).astype(np.int32),
        "next": {
            "observation": rng.normal(size=(n, 4)).astype(np.float32),
            "reward": np.ones(n, np.float32),
            "terminated": rng.random(n) < 0.3,
        },
    }
    weight = rng.random(n).astype(np.float32)
    loss, td = jax.jit(agent._loss)(params, target, batch, weight)
    q = np_mlp(params, batch["observation"])[np.arange(n), batch["action"]]
    qt = np_mlp(target, batch["next"]["observation"])
    a_star = np_mlp(params, batch["next"]["observation"]).argmax(-1) if double else qt.argmax(-1)
    y = 1.0 + cfg.gamma * (~batch["next"]["terminated"]) * qt[np.arange(n), a_star]
    d = q - y
    huber = np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5)
    np.testing.assert_allclose(td, d, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, np.mean(weight * huber), rtol=1e-4, atol=1e-5)


def test_prioritized_smoke():
    """``--prioritized``: PrioritizedSampler + update_priority compile and train (finite loss)."""
    cfg = dataclasses.replace(dqn.DQNConfig(), prioritized=True, total_frames=2_048, learning_starts=1_024,
                              steps_per_collect=4, updates_per_collect=4, log_every=1_024, buffer_size=2_048,
                              batch_size=32, hidden=(16,))
    agent = dqn.DQN(cfg)
    state = agent.init(jax.random.key(0))
    for _ in range(2):
        state, m = agent.chunk(state)
    assert np.isfinite(float(m["loss"]))
    # Learning starts with the collect that reaches learning_starts frames (frame 1024 of 2048).
    per_collect = cfg.num_envs * cfg.steps_per_collect
    assert int(state.updates) == ((cfg.total_frames - cfg.learning_starts) // per_collect + 1) * cfg.updates_per_collect
    leaf_priorities = np.asarray(state.buffer.sampler.tree.sums[-1])  # the tree's leaves
    assert np.ptp(leaf_priorities) > 0  # update_priority wrote TD-error priorities


@pytest.mark.slow
def test_cli_trains_cartpole(capsys):
    """``python -m rlbuf.examples.dqn`` on a short budget: learns well above random (≈ 22), the
    last printed line is the final return, the jitted step compiles once and donates its state."""
    r = dqn.main(["--total-frames", "40960", "--eval-every", "10240", "--quiet", "--seed", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("final eval return: ")
    assert float(lines[-1].split(":")[1]) == pytest.approx(r["final_return"], abs=0.06)
    frames, returns = r["curve"]
    assert frames == [10_240, 20_480, 30_720, 40_960]
    assert max(returns) > 100 and r["final_return"] > 50, (returns, r["final_return"])
    agent, state = r["agent"], r["state"]
    assert agent.chunk._cache_size() == 1
    old = jax.tree.leaves(state.buffer.storage)[0]
    frames = int(state.collector.frames)
    new, _ = agent.chunk(state)
    assert old.is_deleted()  # the buffer was donated: updated in place
    assert int(new.buffer.added) == (frames + agent.cfg.log_every) // agent.cfg.num_envs
    assert agent.chunk._cache_size() == 1


def test_dueling_q_matches_numpy():
    agent = dqn.DQN(dataclasses.replace(dqn.DQNConfig(), dueling=True, hidden=(8, 8)))
    params = agent.init_params(jax.random.key(4))
    obs = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    h = np.maximum(np_mlp(params["torso"], obs), 0)
    v = h @ np.asarray(params["value"]["w"], np.float64) + np.asarray(params["value"]["b"], np.float64)
    a = h @ np.asarray(params["advantage"]["w"], np.float64) + np.asarray(params["advantage"]["b"], np.float64)
    np.testing.assert_allclose(jax.jit(dqn.q_values)(params, obs), v + a - a.mean(-1, keepdims=True), rtol=1e-5,
                               atol=1e-5)
