"""The IPPO example (``python -m rlbuf.examples.ippo``): the per-agent GAE of the learner batch
against a numpy reference on a real multi-agent batch, the policy's layout, and a tiny vmapped
two-seed run through the CLI (printed lines, PNG, finite parameters, one compilation).

The 3-seed learning figures are in BENCHMARKS.md ("Multi-agent"), not run here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jaxmarl")

from rlbuf.examples import ippo  # noqa: E402

CFG = dataclasses.replace(ippo.IPPOConfig(), num_envs=2, steps_per_collect=32, num_minibatches=4, update_epochs=1,
                          total_frames=128, log_every=64, eval_every=64, eval_episodes=2, num_seeds=2, hidden=16)


@pytest.fixture(scope="module")
def agent():
    return ippo.IPPO(CFG)


def np_gae(r, v, nv, term, done, gamma, lmbda):
    """Reference GAE on ``[B, T, A]`` (time axis 1), a plain reverse loop per env and agent."""
    adv = np.zeros_like(r)
    B, T, A = r.shape
    for b in range(B):
        for a in range(A):
            nxt = 0.0
            for t in reversed(range(T)):
                delta = r[b, t, a] + gamma * (0.0 if term[b, t, a] else nv[b, t, a]) - v[b, t, a]
                cut = done[b, t, a] or term[b, t, a] or t == T - 1
                nxt = delta + (0.0 if cut else gamma * lmbda * nxt)
                adv[b, t, a] = nxt
    return adv


def test_learner_batch_per_agent_gae_matches_numpy(agent):
    """A 32-step collect crosses MPE's 26-step episode end: the truncation bootstraps from V of the
    true final observation and nothing flows back from the next episode."""
    s = agent.init_one(jax.random.key(1))
    _, batch = jax.jit(agent.collector.collect)(s.collector, s.params)
    lb = jax.jit(agent.learner_batch)(s.params, batch)
    A = len(agent.marl_env.agents)
    assert lb["advantage"].shape == (CFG.num_envs, CFG.steps_per_collect, A)
    assert lb["observation"].shape == (CFG.num_envs, CFG.steps_per_collect, A, agent.obs_dim)
    nxt = batch["next"][ippo.GROUP]
    assert bool(nxt["done"].any()), "the batch should contain an episode end"
    nv = np.asarray(agent.net.apply(s.params, nxt["observation"])[1], np.float64)
    want = np_gae(*(np.asarray(x, np.float64) for x in (nxt["reward"], batch["value"])), nv,
                  np.asarray(nxt["terminated"]), np.asarray(nxt["done"]), CFG.gamma, CFG.gae_lambda)
    np.testing.assert_allclose(lb["advantage"], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lb["value_target"], want + np.asarray(batch["value"]), rtol=1e-4, atol=1e-4)
    # the stored log-probs are those of the stored actions under the behaviour params
    logits = agent.net.apply(s.params, batch[ippo.GROUP]["observation"])[0]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch[ippo.GROUP]["action"][..., None], -1)[..., 0]
    np.testing.assert_allclose(batch["log_prob"], logp, rtol=1e-5, atol=1e-5)


def test_cli_tiny_run_two_seeds(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("RLBUF_JAX_CACHE", "")
    png = tmp_path / "curve.png"
    out = ippo.main(["--seeds", "3", "7", "--num-envs", "2", "--steps-per-collect", "32", "--total-frames", "128",
                     "--eval-every", "64", "--quiet", "--plot", str(png)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("random-policy return: ") and lines[-1].startswith("final eval return: ")
    assert float(lines[0].split(":")[1]) == pytest.approx(out["random_return"], abs=0.06)
    assert [float(x) for x in lines[-1].split(":")[1].split()] == pytest.approx(list(out["final_returns"]), abs=0.06)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["plot"] == str(png.resolve())
    assert out["random_return"] < 0 and np.all(np.isfinite(out["final_returns"]))
    frames, curve = out["curve"]
    assert frames == [64, 128] and curve.shape == (2, 2) and np.all(curve < 0)
    assert out["agent"].chunk._cache_size() == 1
    leaves = jax.tree.leaves(out["state"].params)
    assert all(x.shape[0] == 2 and bool(jnp.isfinite(x).all()) for x in leaves)
    assert not np.allclose(np.asarray(leaves[0][0]), np.asarray(leaves[0][1]))
