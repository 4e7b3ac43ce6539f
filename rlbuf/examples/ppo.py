"""PPO on gymnax CartPole-v1 from rlbuf's ``Collector``, ``rlbuf.returns.gae`` and minibatches
drawn by ``SamplerWithoutReplacement``.

Run it::

    python -m rlbuf.examples.ppo                        # one seed, prints ~500 at the end
    python -m rlbuf.examples.ppo --num-seeds 5 --plot ppo.png   # seeds 0-4 at once, one process

One iteration (PureJaxRL's CartPole configuration: 4 envs x 128 steps, 4 epochs of 4
minibatches, Adam 2.5e-4 annealed to 0, clip 0.2, GAE gamma 0.99 / lambda 0.95):

1. ``Collector.collect``: ``[num_envs, steps_per_collect]`` steps of the stochastic policy; the
   policy's extras ``"log_prob"`` and ``"value"`` are stored in the batch.
2. ``rlbuf.returns.gae`` on ``[B, T]`` (time last), with ``next_value`` = V of the TRUE next
   observation: CartPole's 500-step time limit is a truncation and is bootstrapped, not
   treated as a termination (PureJaxRL's ``_calculate_gae`` does the latter).
3. ``ReplayBuffer.add`` of the batch (+ ``"advantage"``, ``"value_target"``) into a
   ``LazyTensorStorage`` of exactly one batch, then ``update_epochs * num_minibatches``
   ``sample`` calls: ``SamplerWithoutReplacement`` returns each item once per epoch.
4. The clipped PPO loss (per-minibatch advantage normalisation, clipped value loss, entropy
   bonus), optax Adam with global-norm clipping.

Iterations run in a ``lax.scan`` inside one ``jax.jit`` (state donated); ``--num-seeds S``
trains ``S`` seeds at once: every leaf of the state has a leading ``[S]`` axis, collection,
GAE, ``add`` and the gradient steps are ``vmap``ped over it and the minibatch ``sample`` is a
``lax.map`` (keeping the sampler's ``lax.cond``). The reported number (last line,
``final eval return: X``) is a fresh greedy (argmax) evaluation of the LAST parameters, no
best-checkpoint choice; with several seeds, one value per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import returns
from rlbuf.buffers.replay_buffer import BufferState, ReplayBuffer
from rlbuf.examples import _cli, _loop, _nets
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

SOLVED = 475.0


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters (frozen, hashable). Frames count env steps over all envs of one seed."""

    seed: int = 0
    num_seeds: int = 1  # seeds seed, seed+1, ... trained together (vmapped)
    total_frames: int = 499_712  # 976 iterations of 512 frames (PureJaxRL: 5e5 // 512 updates)
    num_envs: int = 4
    steps_per_collect: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 2.5e-4
    anneal_lr: bool = True  # linear decay to 0 over the iterations (PureJaxRL's schedule)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    env_name: str = "CartPole-v1"
    log_every: int = 8_192  # frames per jitted call (progress refresh); multiple of num_envs * T
    eval_every: int = 32_768  # frames between greedy evaluations (rounded to log_every)
    eval_episodes: int = 32

    @property
    def frames_per_iter(self) -> int:
        return self.num_envs * self.steps_per_collect

    @property
    def num_iterations(self) -> int:
        return self.total_frames // self.frames_per_iter

    @property
    def minibatch_size(self) -> int:
        return self.frames_per_iter // self.num_minibatches

    def check(self):
        if self.frames_per_iter % self.num_minibatches:
            raise ValueError(f"num_envs * steps_per_collect = {self.frames_per_iter} must be divisible by "
                             f"num_minibatches = {self.num_minibatches}")
        if self.num_iterations < 1:
            raise ValueError(f"total_frames={self.total_frames} is less than one iteration (num_envs * "
                             f"steps_per_collect = {self.frames_per_iter})")
        if self.log_every % self.frames_per_iter:
            raise ValueError(f"log_every={self.log_every} must be a multiple of num_envs * steps_per_collect "
                             f"= {self.frames_per_iter}")


def make_network(n_actions: int, hidden: int):
    """PureJaxRL's actor-critic: separate 2x``hidden`` tanh MLPs, orthogonal init. ``apply(params,
    obs [..., obs_dim]) -> (logits [..., n_actions], value [...])``."""
    import flax.linen as nn

    def dense(n, scale):
        return nn.Dense(n, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)

    class ActorCritic(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.tanh(dense(hidden, np.sqrt(2))(x))
            a = nn.tanh(dense(hidden, np.sqrt(2))(a))
            logits = dense(n_actions, 0.01)(a)
            c = nn.tanh(dense(hidden, np.sqrt(2))(x))
            c = nn.tanh(dense(hidden, np.sqrt(2))(c))
            return logits, dense(1, 1.0)(c)[..., 0]

    return ActorCritic()


def make_optimizer(cfg: PPOConfig):
    """optax: global-norm clipping then Adam (eps 1e-5); the step size drops by ``lr /
    num_iterations`` after each iteration's ``update_epochs * num_minibatches`` steps."""
    import optax

    per_iter = cfg.update_epochs * cfg.num_minibatches

    def schedule(count):
        return cfg.lr * jnp.maximum(0.0, 1.0 - (count // per_iter) / cfg.num_iterations)

    lr = schedule if cfg.anneal_lr else cfg.lr
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))


def ppo_loss(net, cfg: PPOConfig, params, mb: dict):
    """The clipped PPO objective on a minibatch ``mb`` (leaves ``[M, ...]``: ``"observation"``,
    ``"action"``, ``"log_prob"`` and ``"value"`` of the behaviour policy, ``"advantage"``,
    ``"value_target"``). Returns ``(loss, (value_loss, actor_loss, entropy))``."""
    logits, value = net.apply(params, mb["observation"])
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, mb["action"][..., None].astype(jnp.int32), -1)[..., 0]
    v_clip = mb["value"] + jnp.clip(value - mb["value"], -cfg.clip_eps, cfg.clip_eps)
    target = mb["value_target"]
    value_loss = 0.5 * jnp.maximum(jnp.square(value - target), jnp.square(v_clip - target)).mean()
    ratio = jnp.exp(logp - mb["log_prob"])
    adv = mb["advantage"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    actor_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean()
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
    loss = actor_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
    return loss, (value_loss, actor_loss, entropy)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PPOState:
    """Everything the jitted training chunk carries (donated to it); every leaf has a leading
    ``[S]`` seed axis (``init_one`` builds one seed's state without it)."""

    params: Any
    opt: Any
    buffer: BufferState
    collector: Any
    key: jax.Array


class PPO:
    """The agent for one config: network, optimizer, collector, buffer and the jitted chunk."""

    def __init__(self, cfg: PPOConfig):
        import gymnax

        from rlbuf.collectors import Collector

        cfg.check()
        self.cfg = cfg
        self.env, self.env_params = gymnax.make(cfg.env_name)
        self.n_actions = self.env.action_space(self.env_params).n
        self.obs_dim = int(np.prod(self.env.observation_space(self.env_params).shape))
        self.net = make_network(self.n_actions, cfg.hidden)
        self.tx = make_optimizer(cfg)
        net = self.net

        def policy(params, obs, key):
            """Sample from the policy on ``obs [B, obs_dim]``; store its log-prob and value."""
            logits, value = net.apply(params, obs)
            action = jax.random.categorical(key, logits).astype(jnp.int32)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
            return action, {"log_prob": logp, "value": value}

        self.collector = Collector(self.env, policy, frames_per_batch=cfg.frames_per_iter, num_envs=cfg.num_envs,
                                   env_params=self.env_params)
        # One batch exactly: each add overwrites the previous iteration's data, and an epoch of
        # SamplerWithoutReplacement is num_minibatches samples.
        self.rb = ReplayBuffer(storage=LazyTensorStorage(cfg.frames_per_iter, ndim=2),
                               sampler=SamplerWithoutReplacement(), batch_size=cfg.minibatch_size)
        self.chunk = jax.jit(self._chunk, donate_argnums=0)
        evaluate = jax.jit(jax.vmap(self._evaluate))
        # run_chunks passes one key: one evaluation key per seed is split off it
        self.evaluate = lambda params, key: evaluate(params, jax.random.split(key, self.cfg.num_seeds))

    # ------------------------------------------------------------------ state
    def init_one(self, key: jax.Array) -> PPOState:
        k_net, k_col, k_run = jax.random.split(key, 3)
        params = self.net.init(k_net, jnp.zeros((self.obs_dim,), jnp.float32))
        cstate = self.collector.init(k_col)
        example = jax.eval_shape(lambda c: self.learner_batch(params, self.collector.collect(c, params)[1]), cstate)
        return PPOState(params=params, opt=self.tx.init(params), buffer=self.rb.init(example), collector=cstate,
                        key=k_run)

    def init(self, seeds) -> PPOState:
        """The stacked state of ``seeds`` (leaves ``[S, ...]``)."""
        return jax.jit(jax.vmap(self.init_one))(jnp.stack([jax.random.key(int(s)) for s in seeds]))

    # ------------------------------------------------------------------ learning
    def learner_batch(self, params, batch: dict) -> dict:
        """What is stored: the behaviour policy's data plus GAE ``"advantage"`` / ``"value_target"``
        (``[B, T]``), computed with V of the true next observations."""
        cfg = self.cfg
        nxt = batch["next"]
        _, next_value = self.net.apply(params, nxt["observation"])
        adv, target = returns.gae(nxt["reward"], batch["value"], next_value, nxt["terminated"], nxt["done"],
                                  gamma=cfg.gamma, lmbda=cfg.gae_lambda)
        return {"observation": batch["observation"], "action": batch["action"], "log_prob": batch["log_prob"],
                "value": batch["value"], "advantage": adv, "value_target": target}

    def _iteration(self, s: PPOState, _):
        """One collect + GAE + add + ``update_epochs * num_minibatches`` updates of every seed
        (leaves ``[S, ...]``); returns per-seed ``(episode return sum, episodes, mean loss)``."""
        cfg = self.cfg
        cstate, batch = jax.vmap(self.collector.collect)(s.collector, s.params)
        buffer = jax.vmap(self.rb.add)(s.buffer, jax.vmap(self.learner_batch)(s.params, batch))
        grad_fn = jax.vmap(jax.value_and_grad(lambda p, mb: ppo_loss(self.net, cfg, p, mb), has_aux=True))

        def sample(buffer_key):
            # No can_sample gate: the buffer holds this iteration's whole batch (the minibatches
            # of one epoch), so it can always sample; an empty one would give masked zeros.
            buffer, mb, _ = self.rb.sample(*buffer_key)
            return buffer, mb

        def update(c, k):
            params, opt, buffer = c
            # lax.map, not vmap, over seeds: the sampler's new-epoch lax.cond then stays a branch;
            # under vmap it becomes a select that reshuffles at every sample (8x slower here).
            buffer, mb = jax.lax.map(sample, (buffer, k))
            (loss, _), grads = grad_fn(params, mb)
            upd, opt = jax.vmap(self.tx.update)(grads, opt, params)
            params = jax.tree.map(lambda p, u: p + u, params, upd)
            return (params, opt, buffer), loss

        n = cfg.update_epochs * cfg.num_minibatches
        keys = jax.vmap(lambda k: jax.random.split(k, n + 1))(s.key)  # [S, n + 1]
        (params, opt, buffer), losses = jax.lax.scan(update, (s.params, s.opt, buffer),
                                                     jnp.swapaxes(keys[:, 1:], 0, 1))
        s = PPOState(params=params, opt=opt, buffer=buffer, collector=cstate, key=keys[:, 0])
        return s, (*self.episode_stats(batch), losses.mean(0))

    def episode_stats(self, batch: dict):
        """Per-seed ``(sum of the returns of the episodes that ended, their number)`` ``[S]`` of a
        collected batch (leaves ``[S, B, T, ...]``)."""
        nxt = batch["next"]
        ep_sum = jnp.sum(jnp.where(nxt["done"], nxt["episode_reward"], 0.0), axis=(1, 2))
        return ep_sum, jnp.sum(nxt["done"], axis=(1, 2), dtype=jnp.int32)

    def _chunk(self, s: PPOState):
        """``log_every`` frames of training of every seed; returns the new state and per-seed
        metrics ``[S]``."""
        n = self.cfg.log_every // self.cfg.frames_per_iter
        s, (ep_sum, ep_n, loss) = jax.lax.scan(self._iteration, s, None, length=n)  # metrics [n, S]
        n_ep = ep_n.sum(0)
        return s, {"return": ep_sum.sum(0) / jnp.maximum(n_ep, 1), "episodes": n_ep, "loss": loss.mean(0)}

    def _evaluate(self, params, key):
        """Mean greedy (argmax) return over ``eval_episodes`` fresh episodes."""
        act = lambda c, obs: (jnp.argmax(self.net.apply(params, obs)[0], -1).astype(jnp.int32), c)  # noqa: E731
        ret = _nets.greedy_returns(self.env, self.env_params, act, (), key, self.cfg.eval_episodes,
                                   int(self.env_params.max_steps_in_episode))
        return ret.mean()


def frames_to_solve(frames, curve, threshold: float = SOLVED, *, stay: bool = False):
    """Frames of the first evaluation whose return is >= ``threshold`` (None if never); with
    ``stay``, of the first one from which every later evaluation is >= ``threshold`` too."""
    ok = np.asarray(curve) >= threshold
    if stay:
        bad = np.flatnonzero(~ok)
        i = 0 if bad.size == 0 else bad[-1] + 1
        return frames[i] if i < len(frames) else None
    return frames[int(np.argmax(ok))] if ok.any() else None


def train(cfg: PPOConfig, *, seeds=None, quiet: bool = False, plot: str | None = None, agent_cls=None,
          solved: float | None = SOLVED, name: str = "PPO") -> dict:
    """Train one agent per seed of ``seeds`` (default ``cfg.seed, cfg.seed + 1, ...``,
    ``cfg.num_seeds`` of them) at once; returns ``{"final_returns" [S], "curve": (frames,
    returns [n_evals, S]), "wall_time", "train_time" (seconds, first chunk and its compile
    excluded), "frames_per_s" (over all seeds, same exclusion), "state", "agent"}``.

    ``agent_cls`` (default ``PPO``) builds the agent from ``cfg``: an ``_loop.Agent`` with ``init(seeds)``
    (the benchmark's
    hand-written reference loop reuses this driver). Prints progress (unless ``quiet``) and,
    last, ``final eval return: X`` (one value per seed). ``solved``: the return threshold of the
    "first at frames" summary line (None: no such line); ``name``: the algorithm's name in the
    progress bar and the plot title.
    """
    t0 = time.perf_counter()
    seeds = list(seeds) if seeds is not None else [cfg.seed + i for i in range(cfg.num_seeds)]
    cfg = dataclasses.replace(cfg, num_seeds=len(seeds))
    agent = (agent_cls or PPO)(cfg)
    state = agent.init(seeds)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1_000_003)
    state, key, frames_curve, returns_curve, _, train_time = _loop.run_chunks(
        agent, state, key, quiet=quiet, desc=f"{name} {cfg.env_name} x{cfg.num_seeds}")
    key, k = jax.random.split(key)
    final = np.asarray(agent.evaluate(state.params, k))
    wall = time.perf_counter() - t0
    n_chunks = -(-cfg.total_frames // cfg.log_every)
    timed_frames = (n_chunks - 1) * cfg.log_every * cfg.num_seeds
    fps = timed_frames / train_time if train_time > 0 else float("nan")
    curve = (frames_curve, np.stack(returns_curve))
    png = None
    if plot:
        png = _cli.save_curve(plot, {f"seed {s}": (frames_curve, curve[1][:, j]) for j, s in enumerate(seeds)},
                              f"{name} on {cfg.env_name}, greedy eval of the current params")
    if not quiet:
        print(f"wall time {wall:.1f}s incl. compile; training {fps:,.0f} frames/s over {cfg.num_seeds} seed(s)")
        if solved is not None:
            first = [frames_to_solve(frames_curve, curve[1][:, j], solved) for j in range(cfg.num_seeds)]
            stay = [frames_to_solve(frames_curve, curve[1][:, j], solved, stay=True) for j in range(cfg.num_seeds)]
            print(f"eval >= {solved:.0f} first at frames {first}, from then on at {stay}; last params >= "
                  f"{solved:.0f} on {int((final >= solved).sum())}/{cfg.num_seeds} seeds")
        if png:
            print(f"learning curve: {png}")
    print(f"final eval return: {' '.join(f'{v:.1f}' for v in np.atleast_1d(final))}")
    return {"final_returns": final, "curve": curve, "wall_time": wall, "train_time": train_time,
            "frames_per_s": fps, "state": state, "agent": agent, "seeds": seeds, "plot": png}


def main(argv=None) -> dict:
    d = PPOConfig()
    p = argparse.ArgumentParser(prog="python -m rlbuf.examples.ppo", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-seeds", type=int, default=d.num_seeds, help="train seeds seed, seed+1, ... at once")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train one agent per seed at once")
    p.add_argument("--total-frames", type=int, default=d.total_frames, help="frames per seed")
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--steps-per-collect", type=int, default=d.steps_per_collect, help="T of each [B, T] batch")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="frames between greedy evaluations")
    p.add_argument("--plot", default=None, metavar="PATH", help="write the learning curves to this PNG (matplotlib)")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    a = p.parse_args(argv)
    per = a.num_envs * a.steps_per_collect
    log_every = max(per, min(d.log_every, a.eval_every) // per * per)
    cfg = dataclasses.replace(d, seed=a.seed, num_seeds=a.num_seeds, total_frames=a.total_frames,
                              num_envs=a.num_envs, steps_per_collect=a.steps_per_collect,
                              eval_every=a.eval_every, log_every=log_every)
    _cli.enable_compilation_cache()
    return train(cfg, seeds=a.seeds, quiet=a.quiet, plot=a.plot)


if __name__ == "__main__":
    main()
