"""The DQN example (``python -m rlbuf.examples.dqn``).

Reference models: a numpy MLP (the flax Q-network, plain and dueling), a numpy double-DQN
Huber loss and numpy target updates (Polyak and hard copy); the vmapped multi-seed trainer
against single-seed runs; the command line in a subprocess (last line, PNG, persistent
compilation cache); the slow test trains on a short budget and checks it learns (random
CartPole ≈ 22).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf.examples import _cli, _loop, dqn

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dataclasses.replace(dqn.DQNConfig(), total_frames=2_048, learning_starts=1_024, steps_per_collect=4,
                           updates_per_collect=4, log_every=1_024, eval_every=1_024, buffer_size=2_048,
                           batch_size=32, hidden=(16,), eval_episodes=4, prioritized=False)

# ---------------------------------------------------------------------------- numpy references


def np_mlp(layers, x):
    """``layers``: a flax ``MLP``'s params (``Dense_i`` -> kernel, bias)."""
    n = len(layers)
    for i in range(n):
        d = layers[f"Dense_{i}"]
        x = x @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)
        if i < n - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("double", [True, False])
def test_loss_matches_numpy(double):
    cfg = dataclasses.replace(dqn.DQNConfig(), double=double, hidden=(32, 32))
    agent = dqn.DQN(cfg)
    kp, kt = jax.random.split(jax.random.key(1))
    params, target = agent.init_params(kp), agent.init_params(kt)
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
    mlp = lambda p, x: np_mlp(p["params"]["MLP_0"], x)  # noqa: E731
    q = mlp(params, batch["observation"])[np.arange(n), batch["action"]]
    qt = mlp(target, batch["next"]["observation"])
    a_star = mlp(params, batch["next"]["observation"]).argmax(-1) if double else qt.argmax(-1)
    y = 1.0 + cfg.gamma * (~batch["next"]["terminated"]) * qt[np.arange(n), a_star]
    d = q - y
    huber = np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5)
    np.testing.assert_allclose(td, d, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, np.mean(weight * huber), rtol=1e-4, atol=1e-5)


def test_dueling_q_matches_numpy():
    agent = dqn.DQN(dataclasses.replace(dqn.DQNConfig(), dueling=True, hidden=(8, 8)))
    params = agent.init_params(jax.random.key(4))
    p = params["params"]
    obs = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    h = np.maximum(np_mlp(p["torso"], obs), 0)
    v, a = np_mlp(p["value"], h), np_mlp(p["advantage"], h)
    np.testing.assert_allclose(jax.jit(agent.q)(params, obs), v + a - a.mean(-1, keepdims=True), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_target_update_matches_numpy(tau):
    """``target_tau < 1``: Polyak ``tau * params + (1 - tau) * target`` after every update;
    ``target_tau = 1``: a hard copy after every ``target_update_every``-th update only."""
    cfg = dataclasses.replace(TINY, target_tau=tau, target_update_every=3, lr=0.1, lr_end=0.1)
    agent = dqn.DQN(cfg)
    s = agent.init(jax.random.key(0))
    step = jax.jit(lambda s, g: agent.apply_grads(s, g, s.buffer))
    target = jax.tree.map(np.asarray, s.target)
    for n in range(1, 7):
        grads = jax.tree.map(lambda x: jnp.full_like(x, 0.1 * n), s.params)
        s = step(s, grads)
        params = jax.tree.map(np.asarray, s.params)
        if tau < 1:
            target = jax.tree.map(lambda p, t: tau * p + (1 - tau) * t, params, target)
        elif n % 3 == 0:
            target = params
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s.target, target)
        assert int(s.updates) == n


def test_prioritized_smoke():
    """``--prioritized``: PrioritizedSampler + update_priority compile and train (finite loss)."""
    cfg = dataclasses.replace(TINY, prioritized=True)
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


def test_seeds_vmapped_match_single_runs():
    """``train(cfg, seeds=[...])`` computes, per seed, what ``train`` computes for that seed
    alone (same keys, same updates): parameters and eval curves agree."""
    many = dqn.train(TINY, seeds=[0, 3], quiet=True)
    one = dqn.train(dataclasses.replace(TINY, seed=3), quiet=True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-3, atol=1e-4), many["params"],
                 one["params"])
    np.testing.assert_allclose([r[1] for r in many["curve"][1]], one["curve"][1], atol=1.0)
    np.testing.assert_allclose(many["final_return"][1], one["final_return"], atol=1.0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_matches_numpy(schedule):
    """``make_optimizer``'s learning rate against a numpy schedule: with a constant gradient
    (well under the clipping norm) Adam's step is ``lr(k)`` times a factor that tends to 1,
    so each step over the first divided by ``lr(k) / lr(0)`` is constant."""
    cfg = dataclasses.replace(dqn.DQNConfig(), lr=1e-2, lr_end=1e-3, lr_schedule=schedule)
    n = 40
    tx = dqn.make_optimizer(cfg, n)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.full(3, 0.1)}
    opt, steps = tx.init(params), []
    for _ in range(n + 5):  # past the end the rate stays at lr_end
        upd, opt = tx.update(grads, opt, params)
        steps.append(-float(upd["w"][0]))
    k = np.minimum(np.arange(n + 5), n) / n
    lr = cfg.lr + (cfg.lr_end - cfg.lr) * (k if schedule == "linear" else 0.5 * (1 - np.cos(np.pi * k)))
    np.testing.assert_allclose(np.array(steps) / steps[0], lr / lr[0], rtol=1e-4)
    with pytest.raises(ValueError, match="lr_schedule='step' must be 'linear' or 'cosine'"):
        dqn.make_optimizer(dataclasses.replace(cfg, lr_schedule="step"), n)


def test_split_matches_per_seed_split():
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    got = _loop.split(keys, 3)
    assert got.shape == (3, 3)
    for s in range(3):
        want = jax.random.split(jax.random.key(s), 3)
        np.testing.assert_array_equal(jax.random.key_data(got[:, s]), jax.random.key_data(want))


def test_set_override_parses_and_rejects_unknown_fields():
    cfg = _cli.override(dqn.DQNConfig(), ["target_tau=0.01", "hidden=(64, 64)", "double=False"])
    assert (cfg.target_tau, cfg.hidden, cfg.double) == (0.01, (64, 64), False)
    with pytest.raises(SystemExit, match="'nope' is not a DQNConfig field"):
        _cli.override(dqn.DQNConfig(), ["nope=1"])


@pytest.mark.slow
def test_cli_subprocess_png_last_line_and_compilation_cache(tmp_path):
    """The command line as a user runs it: the learning curve PNG is written by default and its
    path printed, the last line is the last params' return, and JAX's persistent compilation
    cache is filled (so the next run loads instead of compiling)."""
    cache = tmp_path / "jax-cache"
    env = dict(os.environ, RLBUF_JAX_CACHE=str(cache), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "rlbuf.examples.dqn", "--total-frames", "1024", "--eval-every", "512",
            "--learning-starts", "256", "--quiet", "--set", "hidden=(16,)", "--set", "steps_per_collect=8",
            "--set", "updates_per_collect=2", "--set", "eval_episodes=2"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("final eval return: "), lines
    float(lines[-1].split(":")[1])
    png = tmp_path / "dqn_cartpole_seed0.png"
    assert f"learning curve: {png}" in lines
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(cache.iterdir()), "the persistent compilation cache stayed empty"


@pytest.mark.slow
@pytest.mark.xla_optimized  # 20,480 frames of training: run time, not compile time
def test_cli_trains_cartpole(capsys, monkeypatch):
    """``python -m rlbuf.examples.dqn`` on a short budget: learns well above random (≈ 22), the
    last printed line is the last params' fresh evaluation, ``--keep-best`` adds its own labelled
    line before it, the jitted step compiles once and donates its state."""
    monkeypatch.setenv("RLBUF_JAX_CACHE", "")  # do not turn on the persistent cache in the test process
    # (20,480 frames, seed 0: periodic evals 128 / 101 / 119 / 152, final 160 on 2026-12-07; the
    # learning curves of docs/learning_curves.md run the full budget)
    r = dqn.main(["--total-frames", "20480", "--eval-every", "5120", "--quiet", "--no-plot", "--keep-best"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("final eval return: ")
    assert float(lines[-1].split(":")[1]) == pytest.approx(r["final_return"], abs=0.06)
    assert lines[-2].startswith("best checkpoint (params of the best periodic eval")
    assert float(lines[-2].rsplit(":", 1)[1]) == pytest.approx(float(r["best_return"]), abs=0.06)
    frames, returns = r["curve"]
    assert frames == [5_120, 10_240, 15_360, 20_480]
    assert max(returns) > 100 and r["final_return"] > 50, (returns, r["final_return"])
    agent, state = r["agent"], r["state"]
    assert agent.chunk._cache_size() == 1
    old = jax.tree.leaves(state.buffer.storage)[0]
    frames = int(state.collector.frames)
    new, _ = agent.chunk(state)
    assert old.is_deleted()  # the buffer was donated: updated in place
    assert int(new.buffer.added) == (frames + agent.cfg.log_every) // agent.cfg.num_envs
    assert agent.chunk._cache_size() == 1
