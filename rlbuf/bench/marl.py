"""Multi-agent benchmark: ``rlbuf.examples.ippo`` / ``rlbuf.examples.vdn`` against JaxMARL's own
baselines (``baselines/IPPO/ippo_ff_mpe.py`` and ``baselines/QLearning/vdn_ff.py`` with
``vdn_ff_mpe.yaml``) on ``MPE_simple_spread_v3``, same frames (env steps) and seeds.

JaxMARL's baselines are not in its pip package and are not vendored here: the script clones the
repository at a pinned commit into a temporary directory (``--jaxmarl-src`` takes another
clone source, e.g. a local mirror or checkout) and loads the two files from there; their
``hydra`` / ``omegaconf`` imports (used only by their command lines) are stubbed when missing,
and their ``wandb`` is replaced by a no-op logger (their IPPO still makes its per-update host
callback, as it does with ``WANDB_MODE: disabled``).

Each side trains ``--seeds`` at once (vmapped, one jitted program; theirs with
``jax.random.PRNGKey(seed)`` per seed, ours with ``jax.random.key(seed)``) and is timed from
the call to the end of training, compilation included (``wall_s``; ``cpu_s``: the process's CPU
time over the same span, all threads, which a shared machine disturbs less). Then the LAST parameters
of both are evaluated by the same function, ``rlbuf.examples._marl.team_returns``: greedy
(argmax) joint actions, team return (sum over agents and steps) averaged over 512 episodes
per seed. Their own final figure is printed too: IPPO's logged training return of the last
update (stochastic policy), VDN's last in-training greedy test.

Run: ``python -m rlbuf.bench.marl`` (``--only ippo`` / ``--only vdn``, ``--total-frames``,
``--seeds``); figures in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.examples import _marl

JAXMARL_URL = "https://github.com/FLAIROx/JaxMARL"
#: The JaxMARL commit whose baselines were measured (main, 2026-12; jaxmarl 0.2.0 from pip runs them).
JAXMARL_COMMIT = "c793d09"
ENV_NAME = "MPE_simple_spread_v3"
EVAL_EPISODES = 512


def fetch_baselines(src: str = JAXMARL_URL, ref: str = JAXMARL_COMMIT) -> Path:
    """Clone ``src`` without a checkout into a temporary directory and check out only
    ``baselines/`` at ``ref``; returns the clone's root (a directory that already holds
    ``baselines/IPPO`` is returned as is)."""
    p = Path(src)
    if (p / "baselines" / "IPPO").is_dir():
        return p
    root = Path(tempfile.mkdtemp(prefix="jaxmarl-baselines-")) / "JaxMARL"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", src, str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "checkout", "--quiet", ref, "--", "baselines"], check=True)
    return root


class _NoWandb(types.ModuleType):
    """Stands for ``wandb`` in the baselines: every call is a no-op (no run, no network)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def load_baseline(root: Path, rel: str):
    """Import ``root/rel`` as a module (not as part of a package: the clone's own ``jaxmarl``
    source is never put on the path, the installed jaxmarl runs)."""
    for name in ("hydra", "omegaconf"):  # used by their command lines only
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            # a module's attributes are dynamic: setattr (ModuleType declares none of these)
            setattr(stub, "main", lambda *a, **k: (lambda f: f))
            setattr(stub, "OmegaConf",
                    types.SimpleNamespace(to_container=dict, to_yaml=str, save=lambda *a, **k: None))
            sys.modules[name] = stub
    name = "jaxmarl_baseline_" + Path(rel).stem
    spec = importlib.util.spec_from_file_location(name, root / rel)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the JaxMARL baseline {root / rel}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    setattr(mod, "wandb", _NoWandb("wandb"))
    return mod


def _yaml(root: Path, rel: str) -> dict:
    import yaml

    def number(v):  # YAML 1.1 reads "1e5" as a string; their hydra/OmegaConf loader as a float
        try:
            return float(v) if isinstance(v, str) else v
        except ValueError:
            return v

    return {k: number(v) for k, v in yaml.safe_load((root / rel).read_text()).items()}


@dataclasses.dataclass
class Result:
    name: str
    wall_s: float
    cpu_s: float  # process CPU time (all threads) over the same span: steadier than wall on a shared machine
    eval_returns: np.ndarray  # [S] common greedy evaluation of the last params
    own_returns: np.ndarray  # [S] the implementation's own final figure

    def line(self) -> str:
        ev = " ".join(f"{x:.1f}" for x in self.eval_returns)
        own = " ".join(f"{x:.1f}" for x in self.own_returns)
        return (f"{self.name:<22s} wall {self.wall_s:7.1f}s  cpu {self.cpu_s:7.1f}s  eval (greedy, last params) mean "
                f"{self.eval_returns.mean():7.2f} [{ev}]  own figure [{own}]")


def _evaluate(act_fn, params, seeds) -> np.ndarray:
    """Common evaluation: ``act_fn(params_one_seed) -> act``; params with a leading ``[S]``."""
    import jaxmarl

    env = jaxmarl.make(ENV_NAME)

    def one(p, key):
        return _marl.team_returns(env, act_fn(p), key, EVAL_EPISODES).mean()

    keys = jnp.stack([jax.random.key(10_000 + int(s)) for s in seeds])
    return np.asarray(jax.jit(jax.vmap(one))(params, keys))


def _seed_keys(seeds):
    return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def theirs_ippo(root: Path, total_frames: int, seeds) -> Result:
    mod = load_baseline(root, "baselines/IPPO/ippo_ff_mpe.py")
    config = _yaml(root, "baselines/IPPO/config/ippo_ff_mpe.yaml")
    config.update(TOTAL_TIMESTEPS=total_frames, ENV_NAME=ENV_NAME, NUM_SEEDS=len(seeds))
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(jax.jit(jax.vmap(mod.make_train(config)))(_seed_keys(seeds)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    params = out["runner_state"][0].params
    own = np.asarray(out["metrics"]["returned_episode_returns"][:, -1])  # logged per update: [S, updates]
    net = mod.ActorCritic(5, activation=config["ACTIVATION"])
    act = lambda p: lambda obs, k: jnp.argmax(net.apply(p, obs)[0].logits, -1)  # noqa: E731
    return Result("JaxMARL ippo_ff_mpe", wall, cpu, _evaluate(act, params, seeds), own)


def theirs_vdn(root: Path, total_frames: int, seeds) -> Result:
    mod = load_baseline(root, "baselines/QLearning/vdn_ff.py")
    config = {**_yaml(root, "baselines/QLearning/config/config.yaml"),
              **_yaml(root, "baselines/QLearning/config/alg/vdn_ff_mpe.yaml")}
    config.update(TOTAL_TIMESTEPS=total_frames, ENV_NAME=ENV_NAME, NUM_SEEDS=len(seeds), WANDB_MODE="disabled")
    env, _ = mod.env_from_config(dict(config))
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(jax.jit(jax.vmap(mod.make_train(config, env)))(_seed_keys(seeds)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    train_state, test_state = out["runner_state"][0], out["runner_state"][3]
    own = np.asarray(test_state["returned_episode_returns"])
    net = mod.QNetwork(action_dim=5, hidden_size=config["HIDDEN_SIZE"], num_layers=config["NUM_LAYERS"])

    def act(p):
        def f(obs, k):  # their CTRolloutManager appends a one-hot agent id to each observation
            ids = jnp.broadcast_to(jnp.eye(obs.shape[1]), obs.shape[:1] + (obs.shape[1], obs.shape[1]))
            return jnp.argmax(net.apply(p, jnp.concatenate([obs, ids], -1)), -1)
        return f

    return Result("JaxMARL vdn_ff (mpe)", wall, cpu, _evaluate(act, train_state.params, seeds), own)


def ours_ippo(total_frames: int, seeds) -> Result:
    from rlbuf.examples import ippo

    cfg = dataclasses.replace(ippo.IPPOConfig(), total_frames=total_frames, eval_every=total_frames,
                              log_every=_log_every(total_frames, 2048))
    t0, c0 = time.perf_counter(), time.process_time()
    out = ippo.train(cfg, seeds=seeds, quiet=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    agent = out["agent"]
    act = lambda p: lambda obs, k: jnp.argmax(agent.net.apply(p, obs)[0], -1)  # noqa: E731
    return Result("rlbuf ippo", wall, cpu, _evaluate(act, out["state"].params, seeds), np.asarray(out["final_returns"]))


def ours_vdn(total_frames: int, seeds) -> Result:
    from rlbuf.examples import vdn

    cfg = dataclasses.replace(vdn.VDNConfig(), total_frames=total_frames, eval_every=total_frames)
    cfg = dataclasses.replace(cfg, log_every=_log_every(total_frames, cfg.num_envs * cfg.steps_per_collect))
    t0, c0 = time.perf_counter(), time.process_time()
    out = vdn.train(cfg, seeds=seeds, quiet=True, plot=None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    agent = out["agent"]
    act = lambda p: lambda obs, k: agent.greedy(p, obs)  # noqa: E731
    return Result("rlbuf vdn", wall, cpu, _evaluate(act, out["params"], seeds), np.atleast_1d(out["final_return"]))


def _log_every(total: int, per: int) -> int:
    """The largest multiple of ``per`` <= 65536 that divides ``total`` into whole chunks."""
    n = max(1, min(65_536, total) // per)
    while n > 1 and total % (n * per):
        n -= 1
    return n * per


def main(argv=None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total-frames", type=int, default=None,
                   help="env steps per seed (default: 1,048,576 for IPPO, 262,144 for VDN)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", choices=["ippo", "vdn"], nargs="+", default=["ippo", "vdn"])
    p.add_argument("--side", choices=["theirs", "ours"], nargs="+", default=["theirs", "ours"])
    p.add_argument("--jaxmarl-src", default=JAXMARL_URL,
                   help="where to clone JaxMARL from (URL, local mirror), or a checkout holding baselines/")
    p.add_argument("--jaxmarl-ref", default=JAXMARL_COMMIT)
    a = p.parse_args(argv)
    root = fetch_baselines(a.jaxmarl_src, a.jaxmarl_ref) if "theirs" in a.side else None
    theirs, ours = {"ippo": theirs_ippo, "vdn": theirs_vdn}, {"ippo": ours_ippo, "vdn": ours_vdn}
    results = []
    for algo in a.only:
        frames = a.total_frames or {"ippo": 1_048_576, "vdn": 262_144}[algo]
        print(f"== {algo}: {ENV_NAME}, {frames:,} frames per seed, seeds {a.seeds}", flush=True)
        for side in a.side:
            if side == "theirs":
                assert root is not None  # fetched above whenever their side runs
                r = theirs[algo](root, frames, a.seeds)
            else:
                r = ours[algo](frames, a.seeds)
            results.append(r)
            print(r.line(), flush=True)
    return results


if __name__ == "__main__":
    main()
