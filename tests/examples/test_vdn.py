"""The VDN example (``python -m rlbuf.examples.vdn``): the VDN loss against a numpy reference,
the agent-id features, the multi-agent replay buffer (joint transitions ``[M, A, ...]``), and a
tiny vmapped two-seed run through the CLI (printed lines, PNG, finite parameters, one
compilation).

The 3-seed learning figures are in BENCHMARKS.md ("Multi-agent"), not run here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jaxmarl")

from rlbuf.examples import vdn  # noqa: E402

TINY = dataclasses.replace(vdn.VDNConfig(), total_frames=1_024, num_envs=4, steps_per_collect=8, learning_starts=256,
                           updates_per_collect=2, log_every=512, eval_every=512, buffer_size=1_024, batch_size=16,
                           hidden=(16,), eval_episodes=2, target_update_every=3)


@pytest.fixture(scope="module")
def agent():
    return vdn.VDN(TINY)


def np_q(params, obs):
    """The flax MLP (one hidden ReLU layer) on ``obs`` with one-hot agent ids, in numpy."""
    p = params["params"]
    A = obs.shape[-2]
    x = np.concatenate([obs, np.broadcast_to(np.eye(A), obs.shape[:-1] + (A,))], -1)
    lin = lambda x, i: x @ np.asarray(p[f"Dense_{i}"]["kernel"], np.float64) + np.asarray(p[f"Dense_{i}"]["bias"])  # noqa
    return lin(np.maximum(lin(x, 0), 0), 1)


def test_with_agent_ids():
    obs = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    got = np.asarray(vdn.with_agent_ids(obs))
    assert got.shape == (2, 3, 5)
    np.testing.assert_array_equal(got[..., :2], obs)
    np.testing.assert_array_equal(got[1, :, 2:], np.eye(3))


def test_loss_matches_numpy(agent):
    kp, kt = jax.random.split(jax.random.key(1))
    params, target = agent.init_params(kp), agent.init_params(kt)
    rng = np.random.default_rng(3)
    M, A, D = 16, agent.n_agents, agent.obs_dim
    batch = {"agents": {"observation": rng.normal(size=(M, A, D)).astype(np.float32),
                        "action": rng.integers(0, agent.n_actions, size=(M, A)).astype(np.int32)},
             "next": {"agents": {"observation": rng.normal(size=(M, A, D)).astype(np.float32),
                                 "reward": rng.normal(size=(M, A)).astype(np.float32)},
                      "terminated": rng.random(M) < 0.3}}
    loss, td = jax.jit(agent._loss)(params, target, batch)
    q = np_q(params, batch["agents"]["observation"])
    q_tot = np.take_along_axis(q, batch["agents"]["action"][..., None], -1)[..., 0].sum(-1)
    q_next = np_q(target, batch["next"]["agents"]["observation"]).max(-1).sum(-1)
    y = batch["next"]["agents"]["reward"].sum(-1) + TINY.gamma * (~batch["next"]["terminated"]) * q_next
    np.testing.assert_allclose(td, q_tot - y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, np.mean((q_tot - y) ** 2), rtol=1e-4, atol=1e-4)


def test_replay_buffer_stores_joint_transitions(agent):
    """The collected ``[B, T, A, ...]`` batch goes into ``LazyTensorStorage(ndim=2)``; a sample is
    ``batch_size`` joint transitions (every agent of one env step), whose next observation is the
    one stored with the same step."""
    s = agent.init(jax.random.key(0))
    pp = {"q": s.params, "eps": jnp.float32(1.0)}
    _, batch = jax.jit(agent.collector.collect)(s.collector, pp)
    buf = jax.jit(agent.rb.add)(s.buffer, batch)
    buf, mb, info = jax.jit(agent.rb.sample)(buf, jax.random.key(2))
    A, D = agent.n_agents, agent.obs_dim
    assert mb["agents"]["observation"].shape == (TINY.batch_size, A, D)
    assert mb["agents"]["action"].shape == (TINY.batch_size, A)
    assert mb["next"]["agents"]["reward"].shape == (TINY.batch_size, A)
    assert mb["next"]["terminated"].shape == (TINY.batch_size,)
    assert set(mb) == {"agents", "next"} and set(mb["next"]) == {"agents", "terminated"}
    lane, t = (np.asarray(i) for i in info["index"])  # (env, step) of each item: the first add starts at 0
    obs = np.asarray(batch["agents"]["observation"])
    nobs = np.asarray(batch["next"]["agents"]["observation"])
    np.testing.assert_array_equal(mb["agents"]["observation"], obs[lane, t])
    np.testing.assert_array_equal(mb["next"]["agents"]["observation"], nobs[lane, t])
    assert not np.array_equal(obs[lane, t], nobs[lane, t])


def test_cli_tiny_run_two_seeds(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("RLBUF_JAX_CACHE", "")
    png = tmp_path / "curve.png"
    sets = [f"--set={k}={getattr(TINY, k)!r}" for k in ("steps_per_collect", "updates_per_collect", "buffer_size",
                                                       "batch_size", "hidden", "eval_episodes")]
    out = vdn.main(["--seeds", "3", "7", "--num-envs", "4", "--total-frames", "1024", "--eval-every", "512",
                    "--learning-starts", "256", "--quiet", "--plot", str(png), *sets])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("random-policy return: ") and lines[-1].startswith("final eval return: ")
    assert [float(x) for x in lines[-1].split(":")[1].split()] == pytest.approx(list(out["final_return"]), abs=0.06)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["plot"] == str(png.resolve())
    assert out["random_return"] < 0 and np.all(np.isfinite(out["final_return"]))
    frames, curve = out["curve"]
    assert frames == [512, 1024] and np.all(np.isfinite(curve))
    assert out["runner"].chunk._cache_size() == 1  # every chunk of the vmapped runner ran one program
    leaves = jax.tree.leaves(out["params"])
    assert all(x.shape[0] == 2 and bool(jnp.isfinite(x).all()) for x in leaves)
    assert not np.allclose(np.asarray(leaves[0][0]), np.asarray(leaves[0][1]))
    updates = np.asarray(out["state"].updates)
    per = 4 * TINY.steps_per_collect
    assert np.all(updates == ((1024 - 256) // per + 1) * TINY.updates_per_collect)
