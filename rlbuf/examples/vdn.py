"""VDN (value decomposition networks, Sunehag et al. 2018) on JaxMARL's ``MPE_simple_spread_v3``,
from rlbuf's multi-agent ``Collector`` and a ``ReplayBuffer`` of multi-agent transitions.

Run it::

    python -m rlbuf.examples.vdn                               # seed 0; writes vdn_mpe_seed0.png
    python -m rlbuf.examples.vdn --seeds 0 1 2 --no-plot       # 3 seeds at once (vmapped)
    python -m rlbuf.examples.vdn --set updates_per_collect=8   # any VDNConfig field

As JaxMARL's ``baselines/QLearning/vdn_ff.py`` (``vdn_ff_mpe.yaml``): one Q-network shared by
all agents, whose input is the agent's observation with its one-hot agent index appended;
epsilon-greedy exploration (1 -> 0.05 over the first 10% of frames); the team's Q is the sum of
the agents' chosen Q-values, regressed (squared error) on ``r_team + gamma * sum_i max_a
Q_target(o'_i, a)``; RAdam with a linearly decaying step and global-norm clipping; a hard
target copy every ``target_update_every`` updates; 32 envs x 16 steps per collect, gamma 0.9.
Differences (``VDNConfig`` says which field): a 64-64 ReLU MLP (their ``NUM_LAYERS: 2`` makes a
single linear layer), ``updates_per_collect`` updates per collect instead of one, and the
targets use the stored TRUE next observation of each transition (their flat flashbax buffer
pairs a step with the same env's step one collect later) with MPE's time limit (26 steps)
bootstrapped (a truncation, not a termination).

Each iteration, inside one ``jax.jit`` (``rlbuf.examples._loop``):

1. ``Collector.collect`` of ``rlbuf.envs.make("jaxmarl:MPE_simple_spread_v3")``: leaves
   ``[B, T, A, ...]`` for the group ``"agents"`` (``A = 3``), episode-level flags ``[B, T]``;
2. ``ReplayBuffer.add`` into a ``LazyTensorStorage(ndim=2)`` over ``[B, T]``, keeping only
   ``STORED_KEYS``;
3. ``updates_per_collect`` times: ``sample`` of ``batch_size`` transitions (leaves ``[M, A,
   ...]``, all agents of one env step together: the joint transition VDN needs), one gradient
   step, and the target copy when due.

Printed: first ``random-policy return: X``, last ``final eval return: X``, a fresh greedy
evaluation of the LAST parameters (team return: the sum over agents and steps of the rewards,
the figure JaxMARL's ``MPELogWrapper`` logs; one value per seed with ``--seeds``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.examples import _cli, _loop, _marl, _nets
from rlbuf.samplers.random import RandomSampler
from rlbuf.storages import LazyTensorStorage

#: The agent group of a homogeneous env (``group_map=None``).
GROUP = "agents"
#: What the learner needs of a collected batch (``ReplayBuffer(keys=...)`` stores only these).
STORED_KEYS = ((GROUP, "observation"), (GROUP, "action"), ("next", GROUP, "observation"),
               ("next", GROUP, "reward"), ("next", "terminated"))


@dataclasses.dataclass(frozen=True)
class VDNConfig:
    """Hyper-parameters (frozen, hashable); JaxMARL's ``vdn_ff_mpe.yaml`` unless noted. Frames
    count env steps (one step of all agents), as JaxMARL's ``TOTAL_TIMESTEPS``."""

    seed: int = 0
    total_frames: int = 262_144  # JaxMARL: 1e7
    num_envs: int = 32
    steps_per_collect: int = 16
    buffer_size: int = 100_000  # transitions (env steps)
    batch_size: int = 32
    hidden: tuple = (64, 64)  # JaxMARL: one linear layer (NUM_LAYERS 2 leaves no hidden layer)
    lr: float = 0.005
    lr_end: float = 1e-10  # linear decay over the updates
    gamma: float = 0.9
    max_grad_norm: float = 25.0
    target_tau: float = 1.0
    target_update_every: int = 200  # gradient updates between hard target copies
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.1  # of total_frames
    learning_starts: int = 10_000  # frames
    updates_per_collect: int = 4  # JaxMARL: 1
    env_name: str = "MPE_simple_spread_v3"
    log_every: int = 16_384  # frames per jitted call; multiple of num_envs * steps_per_collect
    eval_every: int = 32_768  # frames between greedy evaluations (rounded to log_every)
    eval_episodes: int = 128


def with_agent_ids(obs: jax.Array) -> jax.Array:
    """``obs [..., A, D]`` -> ``[..., A, D + A]``: each agent's observation with its one-hot index
    appended (the shared network tells agents apart, as JaxMARL's ``CTRolloutManager`` does)."""
    n = obs.shape[-2]
    ids = jnp.broadcast_to(jnp.eye(n, dtype=obs.dtype), obs.shape[:-1] + (n,))
    return jnp.concatenate([obs, ids], axis=-1)


def make_optimizer(cfg: VDNConfig, total_updates: int):
    """RAdam after global-norm clipping, its step decaying linearly from ``lr`` to ``lr_end``."""
    import optax

    schedule = optax.linear_schedule(cfg.lr, cfg.lr_end, max(1, int(total_updates)))
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.radam(schedule))


class VDN(_loop.QLearner):
    """The agent: shared Q-network, collector, multi-agent replay buffer, jitted training chunk."""

    def __init__(self, cfg: VDNConfig):
        import jaxmarl

        from rlbuf import envs
        from rlbuf.collectors import Collector

        per_collect = _loop.frames_per_collect(cfg)
        self.cfg = cfg
        self.env, self.env_params = envs.make(f"jaxmarl:{cfg.env_name}")
        self.marl_env = jaxmarl.make(cfg.env_name)  # evaluation: episodes straight on JaxMARL
        first = self.marl_env.agents[0]
        self.n_agents = len(self.marl_env.agents)
        self.n_actions, self.obs_dim = _marl.agent_dims(self.marl_env, first)
        self.net = _nets.MLP((*cfg.hidden, self.n_actions))
        n_actions, q = self.n_actions, self.q

        def policy(pp, obs, key):
            """Epsilon-greedy per agent on ``obs[GROUP]["observation"] [B, A, D]``; ``pp = {"q":
            params, "eps": scalar}``."""
            greedy = jnp.argmax(q(pp["q"], obs[GROUP]["observation"]), axis=-1).astype(jnp.int32)
            k_a, k_e = jax.random.split(key)
            rand = jax.random.randint(k_a, greedy.shape, 0, n_actions, dtype=jnp.int32)
            return {GROUP: jnp.where(jax.random.uniform(k_e, greedy.shape) < pp["eps"], rand, greedy)}

        self.collector = Collector(self.env, policy, frames_per_batch=per_collect, num_envs=cfg.num_envs,
                                   env_params=self.env_params)
        self.rb = ReplayBuffer(storage=LazyTensorStorage(cfg.buffer_size, ndim=2), sampler=RandomSampler(),
                               batch_size=cfg.batch_size, keys=STORED_KEYS)
        self.total_updates = max(1, (cfg.total_frames - cfg.learning_starts) // per_collect * cfg.updates_per_collect)
        self.tx = make_optimizer(cfg, self.total_updates)
        self.chunk = jax.jit(self._chunk, donate_argnums=0)
        self.evaluate = jax.jit(self._evaluate)

    # ------------------------------------------------------------------ network
    def q(self, params, obs):
        """Per-agent Q-values ``[..., A, n_actions]`` of ``obs [..., A, obs_dim]``."""
        return self.net.apply(params, with_agent_ids(obs))

    def greedy(self, params, obs):
        """Greedy joint action ``[..., A]`` (int32)."""
        return jnp.argmax(self.q(params, obs), axis=-1).astype(jnp.int32)

    def init_params(self, key):
        return self.net.init(key, jnp.zeros((1, self.n_agents, self.obs_dim + self.n_agents), jnp.float32))

    # ------------------------------------------------------------------ learning
    def _loss(self, params, target, batch):
        """VDN's squared TD error on sampled joint transitions (leaves ``[M, A, ...]``; the
        episode-level ``("next", "terminated")`` ``[M]``); returns ``(loss, td [M])``.

        ``Q_tot = sum_i Q(o_i, a_i)``, ``y = sum_i r_i + gamma * (not terminated) * sum_i max_a
        Q_target(o'_i, a)``: the team reward is the sum of the agents' rewards (JaxMARL's
        ``CTRolloutManager`` global reward)."""
        g, nxt = batch[GROUP], batch["next"]
        q = self.q(params, g["observation"])
        q_tot = jnp.take_along_axis(q, g["action"][..., None].astype(jnp.int32), axis=-1)[..., 0].sum(-1)
        q_next = self.q(target, nxt[GROUP]["observation"]).max(-1).sum(-1)
        not_term = 1.0 - nxt["terminated"].astype(jnp.float32)
        y = nxt[GROUP]["reward"].sum(-1) + self.cfg.gamma * not_term * jax.lax.stop_gradient(q_next)
        td = q_tot - y
        return jnp.mean(jnp.square(td)), td

    def update(self, s, key):
        buf, batch, _ = self.rb.sample(s.buffer, key)
        (loss, _), grads = jax.value_and_grad(self._loss, has_aux=True)(s.params, s.target, batch)
        return self.apply_grads(s, grads, buf), loss

    def _evaluate(self, params, key):
        """Mean team return of the greedy joint policy over ``eval_episodes`` fresh episodes."""
        act = lambda obs, k: self.greedy(params, obs)  # noqa: E731
        return _marl.team_returns(self.marl_env, act, key, self.cfg.eval_episodes).mean()


def train(cfg: VDNConfig, *, seeds=None, quiet: bool = False, plot: str | None = None) -> dict:
    """Train one agent (seed ``cfg.seed``), or with ``seeds=[s, ...]`` one per seed at once
    (vmapped). Returns ``{"final_return" (float, or [S] with seeds), "random_return", "curve":
    (frames, returns), "wall_time", "state", "agent", "runner" (the agent or its vmapped
    ``_loop.Seeds``), "params", "plot"}``. Prints the random policy's return first and ``final
    eval return: X`` last."""
    t0 = time.perf_counter()
    agent = VDN(cfg)
    rnd = _marl.random_return(agent.marl_env, jax.random.key(cfg.seed + 999_983), cfg.eval_episodes)
    print(f"random-policy return: {rnd:.1f}", flush=True)
    runner = agent if seeds is None else _loop.Seeds(agent)
    key = jax.random.key(cfg.seed) if seeds is None else jax.vmap(jax.random.key)(jnp.asarray(seeds))
    key, k_init = _loop.split(key)
    state = runner.init(k_init)
    desc = f"VDN {cfg.env_name}" + ("" if seeds is None else f" x{len(seeds)} seeds")
    state, key, frames_curve, returns_curve, _, _ = _loop.run_chunks(runner, state, key, quiet=quiet, desc=desc)
    key, k_last = _loop.split(key)
    final = jax.device_get(runner.evaluate(state.params, k_last))  # fresh episodes, last params
    wall = time.perf_counter() - t0
    png = None
    if plot:
        if seeds is None:
            curves = {"VDN": (frames_curve, returns_curve)}
        else:
            curves = {f"VDN seed {s}": (frames_curve, [r[i] for r in returns_curve]) for i, s in enumerate(seeds)}
        curves["random policy"] = (frames_curve, [rnd] * len(frames_curve))
        png = _cli.save_curve(plot, curves, f"VDN on {cfg.env_name}, greedy eval (team return)")
    if not quiet:
        print(f"wall time {wall:.1f}s ({cfg.total_frames * (1 if seeds is None else len(seeds)) / wall:,.0f} "
              "frames/s incl. compilation)")
        if png:
            print(f"learning curve: {png}")
        if seeds is not None:
            for i, s in enumerate(seeds):
                print(f"seed {s}: final eval return {final[i]:.1f}  curve "
                      + " ".join(f"{r[i]:.1f}" for r in returns_curve))
    if seeds is not None:
        print(f"final eval return: {' '.join(f'{x:.1f}' for x in final)}")
    else:
        print(f"final eval return: {float(final):.1f}")
    return {"final_return": final if seeds is not None else float(final), "random_return": rnd,
            "curve": (frames_curve, returns_curve), "wall_time": wall, "state": state, "agent": agent,
            "runner": runner, "params": state.params, "plot": png}




def main(argv=None) -> dict:
    d = VDNConfig()
    p = argparse.ArgumentParser(prog="python -m rlbuf.examples.vdn", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train one agent per seed at once (vmapped)")
    p.add_argument("--total-frames", type=int, default=d.total_frames, help="env steps per seed")
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="frames between greedy evaluations")
    p.add_argument("--learning-starts", type=int, default=d.learning_starts,
                   help="frames of pure exploration before the first update")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="where to write the learning curve PNG (default vdn_mpe_seed<S>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the learning curve")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any VDNConfig field, e.g. --set updates_per_collect=8 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = _cli.override(dataclasses.replace(d, seed=a.seed, total_frames=a.total_frames, num_envs=a.num_envs,
                                        eval_every=a.eval_every, learning_starts=a.learning_starts), a.set)
    per = cfg.num_envs * cfg.steps_per_collect
    cfg = dataclasses.replace(cfg, log_every=max(per, min(cfg.log_every, cfg.eval_every) // per * per))
    default_png = f"vdn_mpe_seed{cfg.seed}.png" if a.seeds is None else "vdn_mpe_seeds.png"
    plot = None if a.no_plot else (a.plot or default_png)
    _cli.enable_compilation_cache()
    return train(cfg, seeds=a.seeds, quiet=a.quiet, plot=plot)


if __name__ == "__main__":
    main()
