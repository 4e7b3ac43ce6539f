"""DQN on gymnax CartPole-v1, built from rlbuf's ``Collector`` and ``ReplayBuffer`` with a
flax Q-network and an optax optimizer.

Run it (``pip install -e ".[examples]"`` first)::

    python -m rlbuf.examples.dqn                          # default config; writes dqn_cartpole_seed0.png
    python -m rlbuf.examples.dqn --no-prioritized --seed 3 --plot uniform.png   # RandomSampler
    python -m rlbuf.examples.dqn --seeds 0 1 2 3 4 --no-plot   # 5 seeds at once (vmapped)
    python -m rlbuf.examples.dqn --set target_tau=0.01 --set lr=1e-3   # any DQNConfig field

The whole collect -> add -> sample -> update loop runs inside one ``jax.jit``: each call
``lax.scan``s over ``log_every // (num_envs * steps_per_collect)`` iterations of

1. ``Collector.collect``: ``steps_per_collect`` steps of ``num_envs`` vmapped envs with an
   epsilon-greedy policy (the network parameters and epsilon are the collector's
   ``policy_params``);
2. ``ReplayBuffer.add`` of the ``[num_envs, steps_per_collect]`` batch into a
   ``LazyTensorStorage(ndim=2)``;
3. ``updates_per_collect`` times: ``ReplayBuffer.sample`` + a double-DQN Huber-loss optax Adam
   step with gradient clipping (+ ``update_priority`` of the TD errors; ``--no-prioritized``:
   uniform replay) and a Polyak (``target_tau < 1``) or hard (``target_tau = 1``, every ``target_update_every`` updates)
   target-network update.

The training state (buffer included) is donated to the jitted call, so the replay storage is
updated in place. Between calls the host only updates the progress bar and, every
``eval_every`` frames, runs a vmapped greedy evaluation (``eval_episodes`` episodes on gymnax
directly). The job enables JAX's persistent compilation cache (``~/.cache/rlbuf/jax``;
``RLBUF_JAX_CACHE`` moves it, ``RLBUF_JAX_CACHE=`` disables it), so a second run does not
compile again.

The last line, ``final eval return: X``, is a fresh greedy evaluation of the **last**
parameters. ``--keep-best`` also evaluates the parameters of the best periodic evaluation (a
checkpoint chosen on evaluation episodes, printed on its own labelled line); it never replaces
the last line. The sweep behind the default configuration is in ``docs/learning_curves.md``.

Bootstrapping uses ``("next","terminated")``, not ``done``: CartPole's 500-step time limit is a
truncation, and treating it as terminal would make the near-optimal states look bad.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.examples import _cli, _loop, _nets
from rlbuf.samplers.random import RandomSampler
from rlbuf.storages import LazyTensorStorage

#: Keys of the collector's batch that the learner needs: ``ReplayBuffer(keys=...)`` stores only these.
STORED_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"))


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Hyper-parameters (frozen, hashable). Frames count env steps over all envs."""

    seed: int = 0
    total_frames: int = 153_600
    num_envs: int = 8
    steps_per_collect: int = 32  # T of each [num_envs, T] collector batch (256 frames)
    buffer_size: int = 160_000  # > total_frames: early, diverse transitions are never overwritten (sweep)
    batch_size: int = 64
    hidden: tuple = (256, 256)
    lr: float = 2.3e-3
    lr_end: float = 0.0  # decay to lr_end over the run: late updates are small, the policy settles
    lr_schedule: str = "linear"  # "linear" or "cosine" (cosine: the last updates are much smaller)
    gamma: float = 0.99
    max_grad_norm: float = 10.0
    double: bool = True
    dueling: bool = False  # Q = V + A - mean(A) heads on the MLP torso
    target_tau: float = 1.0  # Polyak rate per update (< 1), or 1: hard copy every target_update_every
    target_update_every: int = 128  # gradient updates between hard target copies (target_tau = 1)
    eps_start: float = 1.0
    eps_end: float = 0.01  # a low floor: fewer random actions in late data (with PER: 5/5 seeds 0-4, 14/15 on 0-14)
    eps_fraction: float = 0.16  # of total_frames
    learning_starts: int = 1_000  # frames of pure exploration before the first update
    updates_per_collect: int = 128  # gradient updates per collected batch (0.5 per frame)
    prioritized: bool = True  # PrioritizedSampler (sweep: the last params end >= 400 more often than uniform)
    alpha: float = 0.6
    beta: float = 0.4
    priority_eps: float = 1e-3
    env_name: str = "CartPole-v1"
    keep_best: bool = False  # also evaluate the params of the best periodic eval (a labelled extra line)
    log_every: int = 10_240  # frames per jitted call (progress-bar refresh); multiple of num_envs * T
    eval_every: int = 10_240  # frames between greedy evaluations (rounded to log_every)
    eval_episodes: int = 32


DQNState = _loop.QLearnerState


class QNetwork(nn.Module):
    """``obs [..., obs_dim] -> Q [..., n_actions]``: an MLP, or with ``dueling`` the heads
    ``V + A - mean(A)`` on an MLP torso."""

    hidden: tuple
    n_actions: int
    dueling: bool = False

    @nn.compact
    def __call__(self, obs):
        if not self.dueling:
            return _nets.MLP((*self.hidden, self.n_actions))(obs)
        h = nn.relu(_nets.MLP(self.hidden, name="torso")(obs))
        v = _nets.MLP((1,), name="value")(h)
        a = _nets.MLP((self.n_actions,), name="advantage")(h)
        return v + a - a.mean(axis=-1, keepdims=True)


def make_sampler(cfg: DQNConfig):
    if not cfg.prioritized:
        return RandomSampler()
    from rlbuf.samplers.prioritized import PrioritizedSampler

    return PrioritizedSampler(max_capacity=cfg.buffer_size, alpha=cfg.alpha, beta=cfg.beta)


def make_optimizer(cfg: DQNConfig, total_updates: int):
    """Adam after global-norm gradient clipping, its learning rate decaying from ``lr`` to ``lr_end``
    over ``total_updates`` updates, linearly or along a half cosine (``cfg.lr_schedule``)."""
    import optax

    if cfg.lr_schedule == "linear":
        return _nets.adam(cfg.lr, cfg.lr_end, total_updates, cfg.max_grad_norm)
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"lr_schedule={cfg.lr_schedule!r} must be 'linear' or 'cosine'")
    alpha = cfg.lr_end / cfg.lr if cfg.lr else 0.0
    schedule = optax.cosine_decay_schedule(cfg.lr, max(1, int(total_updates)), alpha=alpha)
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(schedule))


class DQN(_loop.QLearner):
    """The agent: networks, collector, buffer and the jitted training chunk for one config."""

    def __init__(self, cfg: DQNConfig):
        import gymnax

        from rlbuf.collectors import Collector

        per_collect = _loop.frames_per_collect(cfg)
        if not 0.0 < cfg.target_tau <= 1.0:
            raise ValueError(f"target_tau={cfg.target_tau} must be in (0, 1]")
        self.cfg = cfg
        self.env, self.env_params = gymnax.make(cfg.env_name)
        self.n_actions = self.env.action_space(self.env_params).n
        self.obs_dim = int(np.prod(self.env.observation_space(self.env_params).shape))
        self.net = QNetwork(tuple(cfg.hidden), self.n_actions, cfg.dueling)
        n_actions, q = self.n_actions, self.q

        def policy(pp, obs, key):
            """Epsilon-greedy on ``obs [B, obs_dim]``; ``pp = {"q": params, "eps": scalar}``."""
            greedy = jnp.argmax(q(pp["q"], obs), axis=-1).astype(jnp.int32)
            k_a, k_e = jax.random.split(key)
            rand = jax.random.randint(k_a, greedy.shape, 0, n_actions, dtype=jnp.int32)
            return jnp.where(jax.random.uniform(k_e, greedy.shape) < pp["eps"], rand, greedy)

        self.collector = Collector(self.env, policy, frames_per_batch=per_collect, num_envs=cfg.num_envs,
                                   env_params=self.env_params)
        self.rb = ReplayBuffer(storage=LazyTensorStorage(cfg.buffer_size, ndim=2), sampler=make_sampler(cfg),
                               batch_size=cfg.batch_size, keys=STORED_KEYS)  # add() stores only these
        self.total_updates = max(1, (cfg.total_frames - cfg.learning_starts) // per_collect * cfg.updates_per_collect)
        self.tx = make_optimizer(cfg, self.total_updates)
        self.chunk = jax.jit(self._chunk, donate_argnums=0)
        self.evaluate = jax.jit(self._evaluate)

    # ------------------------------------------------------------------ state
    def q(self, params, obs):
        """Q-values ``[..., n_actions]`` of ``obs [..., obs_dim]``."""
        return self.net.apply(params, obs)

    def init_params(self, key):
        return self.net.init(key, jnp.zeros((1, self.obs_dim), jnp.float32))

    # ------------------------------------------------------------------ learning
    def _loss(self, params, target, batch, weight):
        """Double-DQN (or DQN) Huber loss on a sampled batch (leaves ``[batch_size, ...]``), weighted
        by ``weight [batch_size]`` (importance weights, ones without priorities); returns
        ``(loss, td [batch_size])``."""
        cfg = self.cfg
        obs, nobs = batch["observation"], batch["next"]["observation"]
        q = self.q(params, obs)
        q_a = jnp.take_along_axis(q, batch["action"][:, None], axis=-1)[:, 0]
        q_next_t = self.q(target, nobs)
        if cfg.double:
            a_star = jnp.argmax(self.q(params, nobs), axis=-1)
            q_next = jnp.take_along_axis(q_next_t, a_star[:, None], axis=-1)[:, 0]
        else:
            q_next = q_next_t.max(axis=-1)
        not_term = 1.0 - batch["next"]["terminated"].astype(jnp.float32)
        y = batch["next"]["reward"] + cfg.gamma * not_term * jax.lax.stop_gradient(q_next)
        td = q_a - y
        return jnp.mean(weight * _nets.huber(td)), td

    def update(self, s: DQNState, key) -> tuple[DQNState, jax.Array]:
        cfg = self.cfg
        buf, batch, info = self.rb.sample(s.buffer, key)
        weight = info["weight"] if cfg.prioritized else jnp.ones((cfg.batch_size,), jnp.float32)
        (loss, td), grads = jax.value_and_grad(self._loss, has_aux=True)(s.params, s.target, batch, weight)
        if cfg.prioritized:
            buf = self.rb.update_priority(buf, info["index"], jnp.abs(td) + cfg.priority_eps)
        return self.apply_grads(s, grads, buf), loss

    def _evaluate(self, params, key):
        act = lambda c, obs: (jnp.argmax(self.q(params, obs), axis=-1).astype(jnp.int32), c)  # noqa: E731
        ret = _nets.greedy_returns(self.env, self.env_params, act, (), key, self.cfg.eval_episodes,
                                   int(self.env_params.max_steps_in_episode))
        return ret.mean()


def train(cfg: DQNConfig, *, seeds=None, quiet: bool = False, plot: str | None = None) -> dict:
    """Train one agent (seed ``cfg.seed``), or with ``seeds=[s, ...]`` one per seed at once
    (vmapped; each seed's computation is the single-seed one). Returns ``{"final_return",
    "curve": (frames, returns), "wall_time", "state", "agent", "params", "best_return",
    "best_params", "plot"}``.

    ``final_return`` is a fresh greedy evaluation of the last params (an ``[S]`` array with
    ``seeds``). With ``cfg.keep_best``, ``best_return`` is a fresh evaluation of the params of the
    best periodic evaluation (else None). ``plot``: a PNG path for the learning curve. Prints
    progress (unless ``quiet``) and, last, ``final eval return: X``.
    """
    t0 = time.perf_counter()
    agent = DQN(cfg)
    runner = agent if seeds is None else _loop.Seeds(agent)
    key = jax.random.key(cfg.seed) if seeds is None else jax.vmap(jax.random.key)(jnp.asarray(seeds))
    key, k_init = _loop.split(key)
    state = runner.init(k_init)
    best_eval, best_params = np.full(np.shape(key), -np.inf), None

    def keep_best(state, last_eval):
        nonlocal best_eval, best_params
        better = np.asarray(last_eval) >= best_eval  # ties: the later params
        if cfg.keep_best and better.any():
            best_eval = np.where(better, last_eval, best_eval)
            new = jax.tree.map(jnp.copy, state.params)  # the state is donated by the next call
            pick = lambda n, o: jnp.where(better.reshape(better.shape + (1,) * (n.ndim - better.ndim)), n, o)
            best_params = new if best_params is None else jax.tree.map(pick, new, best_params)

    desc = f"DQN {cfg.env_name}" + ("" if seeds is None else f" x{len(seeds)} seeds")
    state, key, frames_curve, returns_curve, _, _ = _loop.run_chunks(runner, state, key, quiet=quiet, desc=desc,
                                                                  on_eval=keep_best)
    key, k_last, k_best = _loop.split(key, 3)
    final = jax.device_get(runner.evaluate(state.params, k_last))  # fresh episodes, last params
    best = None if best_params is None else jax.device_get(runner.evaluate(best_params, k_best))
    wall = time.perf_counter() - t0
    png = None
    if plot:
        label = "DQN" + (" + PER" if cfg.prioritized else "")
        if seeds is None:
            curves = {label: (frames_curve, returns_curve)}
        else:
            curves = {f"{label} seed {s}": (frames_curve, [r[i] for r in returns_curve]) for i, s in enumerate(seeds)}
        png = _cli.save_curve(plot, curves, f"DQN on {cfg.env_name}, greedy eval of the current params")
    if not quiet:
        print(f"wall time {wall:.1f}s ({cfg.total_frames * (1 if seeds is None else len(seeds)) / wall:,.0f} "
              "frames/s incl. compilation)")
    if png:
        print(f"learning curve: {png}")
    if seeds is not None:
        for i, s in enumerate(seeds):
            extra = "" if best is None else f"  best checkpoint {best[i]:.1f}"
            curve = " ".join(f"{r[i]:.0f}" for r in returns_curve)
            print(f"seed {s}: final eval return {final[i]:.1f}{extra}  curve {curve}")
        print(f"final eval return: {' '.join(f'{x:.1f}' for x in final)}  "
              f"(>= 400 on {int((final >= 400).sum())}/{len(seeds)} seeds)")
    else:
        if best is not None:
            print(f"best checkpoint (params of the best periodic eval, {best_eval.item():.1f}; chosen on eval "
                  f"episodes) eval return: {float(best):.1f}")
        print(f"final eval return: {float(final):.1f}")
    return {"final_return": final if seeds is not None else float(final), "curve": (frames_curve, returns_curve),
            "wall_time": wall, "state": state, "agent": agent, "params": state.params, "best_return": best,
            "best_params": best_params, "plot": png}




def main(argv=None) -> dict:
    d = DQNConfig()
    p = argparse.ArgumentParser(prog="python -m rlbuf.examples.dqn", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train one agent per seed at once (vmapped)")
    p.add_argument("--total-frames", type=int, default=d.total_frames)
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--prioritized", action=argparse.BooleanOptionalAction, default=d.prioritized,
                   help="PrioritizedSampler (default) or, with --no-prioritized, RandomSampler")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="where to write the learning curve PNG (default dqn_cartpole_seed<S>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the learning curve")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="frames between greedy evaluations")
    p.add_argument("--learning-starts", type=int, default=d.learning_starts,
                   help="frames of pure exploration before the first update")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=d.keep_best,
                   help="also report the params of the best periodic evaluation (a checkpoint chosen on "
                        "evaluation episodes), on its own line before the final one")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any DQNConfig field, e.g. --set target_tau=0.01 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    per = a.num_envs * d.steps_per_collect
    log_every = max(per, min(d.log_every, a.eval_every) // per * per)
    cfg = dataclasses.replace(d, seed=a.seed, total_frames=a.total_frames, num_envs=a.num_envs,
                              prioritized=a.prioritized, eval_every=a.eval_every, learning_starts=a.learning_starts,
                              keep_best=a.keep_best, log_every=log_every)
    cfg = _cli.override(cfg, a.set)
    plot = None if a.no_plot else (a.plot or (f"dqn_cartpole_seed{cfg.seed}.png" if a.seeds is None
                                              else "dqn_cartpole_seeds.png"))
    _cli.enable_compilation_cache()
    return train(cfg, seeds=a.seeds, quiet=a.quiet, plot=plot)


if __name__ == "__main__":
    main()
