"""The PPO example (``python -m rlbuf.examples.ppo``): the loss against a numpy reference, the
learner batch (GAE with true next values), minibatch epochs that visit every item once, and a
tiny vmapped two-seed run through the CLI that checks shapes, finiteness and one compilation.

The 5-seed proof (greedy return >= 475 with the last params) is recorded in
docs/learning_curves.md, not run here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf import returns
from rlbuf.examples import ppo

CFG = dataclasses.replace(ppo.PPOConfig(), num_envs=2, steps_per_collect=16, num_minibatches=4, update_epochs=2,
                          total_frames=128, log_every=64, eval_every=64, eval_episodes=2, num_seeds=2)


@pytest.fixture(scope="module")
def agent():
    return ppo.PPO(CFG)


def np_forward(params, obs):
    p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()} for k, layer in params["params"].items()}
    lin = lambda x, i: x @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]  # noqa: E731
    a = np.tanh(lin(np.tanh(lin(obs, 0)), 1))
    c = np.tanh(lin(np.tanh(lin(obs, 3)), 4))
    return lin(a, 2), lin(c, 5)[..., 0]


def np_loss(cfg, params, mb):
    logits, value = np_forward(params, np.asarray(mb["observation"], np.float64))
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = logp_all[np.arange(len(logits)), mb["action"]]
    v_old, target = mb["value"], mb["value_target"]
    v_clip = v_old + np.clip(value - v_old, -cfg.clip_eps, cfg.clip_eps)
    vloss = 0.5 * np.maximum((value - target) ** 2, (v_clip - target) ** 2).mean()
    adv = (mb["advantage"] - mb["advantage"].mean()) / (mb["advantage"].std() + 1e-8)
    ratio = np.exp(logp - mb["log_prob"])
    aloss = -np.minimum(ratio * adv, np.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean()
    ent = -(np.exp(logp_all) * logp_all).sum(-1).mean()
    return aloss + cfg.vf_coef * vloss - cfg.ent_coef * ent


def test_loss_matches_numpy(agent):
    rng = np.random.default_rng(0)
    params = agent.net.init(jax.random.key(0), jnp.zeros((4,)))
    params = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32), params)
    n = 16
    mb = {"observation": rng.normal(size=(n, 4)).astype(np.float32), "action": rng.integers(0, 2, n).astype(np.int32),
          "log_prob": np.log(rng.uniform(0.2, 0.8, n)).astype(np.float32),
          "value": rng.normal(size=n).astype(np.float32), "advantage": rng.normal(size=n).astype(np.float32),
          "value_target": rng.normal(size=n).astype(np.float32)}
    loss, _ = jax.jit(lambda p, b: ppo.ppo_loss(agent.net, CFG, p, b))(params, mb)
    np.testing.assert_allclose(loss, np_loss(CFG, params, mb), rtol=1e-4, atol=1e-5)


def test_learner_batch_and_minibatch_epochs(agent):
    """GAE uses V of the true next observation; an epoch of ``num_minibatches`` samples returns
    each stored item of the iteration's batch exactly once."""
    s = agent.init_one(jax.random.key(1))
    cstate, batch = jax.jit(agent.collector.collect)(s.collector, s.params)
    lb = jax.jit(agent.learner_batch)(s.params, batch)
    nv = agent.net.apply(s.params, batch["next"]["observation"])[1]
    adv, tgt = returns.gae(batch["next"]["reward"], batch["value"], nv, batch["next"]["terminated"],
                           batch["next"]["done"], gamma=CFG.gamma, lmbda=CFG.gae_lambda)
    np.testing.assert_allclose(lb["advantage"], adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lb["value_target"], tgt, rtol=1e-5, atol=1e-5)
    assert lb["advantage"].shape == (CFG.num_envs, CFG.steps_per_collect)
    buf = agent.rb.add(s.buffer, lb)
    sample = jax.jit(agent.rb.sample)
    for epoch in range(2):
        seen = []
        for k in range(CFG.num_minibatches):
            buf, mb, info = sample(buf, jax.random.key(10 * epoch + k))
            assert bool(info["mask"].all())
            seen.append(np.asarray(mb["log_prob"]))
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(np.asarray(lb["log_prob"]).ravel()))


def test_cli_tiny_run_two_seeds(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    out = ppo.main(["--seeds", "3", "7", "--num-envs", "2", "--steps-per-collect", "16", "--total-frames", "128",
                    "--eval-every", "64", "--quiet", "--plot", str(png)])
    assert png.stat().st_size > 0 and out["plot"] == str(png.resolve()) and out["seeds"] == [3, 7]
    assert capsys.readouterr().out.strip().startswith("final eval return:")
    assert out["final_returns"].shape == (2,)
    assert np.all((out["final_returns"] >= 1) & (out["final_returns"] <= 500))
    frames, curve = out["curve"]
    assert frames == [64, 128] and curve.shape == (2, 2)
    assert out["agent"].chunk._cache_size() == 1  # every chunk runs the same program
    leaves = jax.tree.leaves(out["state"].params)
    assert all(x.shape[0] == 2 and bool(jnp.isfinite(x).all()) for x in leaves)
    # the two seeds are different runs
    assert not np.allclose(np.asarray(leaves[0][0]), np.asarray(leaves[0][1]))


def test_config_errors():
    with pytest.raises(ValueError, match="num_minibatches"):
        dataclasses.replace(CFG, num_minibatches=3).check()
    with pytest.raises(ValueError, match="log_every"):
        dataclasses.replace(CFG, log_every=100).check()
    with pytest.raises(ValueError, match="less than one iteration"):
        dataclasses.replace(CFG, total_frames=16).check()


def test_frames_to_solve():
    frames = [10, 20, 30, 40]
    assert ppo.frames_to_solve(frames, [0, 500, 100, 480]) == 20
    assert ppo.frames_to_solve(frames, [0, 500, 100, 480], stay=True) == 40
    assert ppo.frames_to_solve(frames, [500, 500, 500, 0], stay=True) is None
    assert ppo.frames_to_solve(frames, [0, 0, 0, 0]) is None
