"""The one training loop of the examples, and the agent interface it drives.

An **agent** (``Agent``, a protocol) is anything with a ``cfg`` (``total_frames``,
``log_every``, ``eval_every``), a jitted ``chunk(state) -> (state, metrics)`` that trains for
``log_every`` frames (``metrics``: ``"return"`` mean episode return, ``"episodes"`` finished
episodes, ``"loss"``; scalars, or ``[S]`` for several seeds) and ``evaluate(params, key)`` (a
greedy return, or ``[S]``). ``run_chunks`` drives any agent: DQN, the recurrent Q-learner,
PPO and ``Seeds(agent)`` (several seeds vmapped) all go through it.

``QLearner`` is the base class of the two Q-learning agents (``dqn.py``, ``recurrent.py``): it
owns their shared iteration (collect -> add -> ``updates_per_collect`` updates), epsilon
schedule and target-network step, and asks each subclass for exactly two things, declared as
abstract methods: ``init_params(key)`` and ``update(state, key) -> (state, loss)``, plus the
attributes ``cfg``, ``collector``, ``rb`` and ``tx`` set in its ``__init__``. Its state is a
``QLearnerState``.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlbuf.buffers.replay_buffer import BufferState
from rlbuf.examples import _cli


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QLearnerState:
    """Everything the jitted training step carries (donated to it)."""

    params: Any
    target: Any
    opt: optax.OptState
    buffer: BufferState
    collector: Any
    key: jax.Array
    updates: jax.Array


def split(key: jax.Array, n: int = 2) -> jax.Array:
    """``jax.random.split`` of one key (``[n]``) or of a batch of per-seed keys ``[S]`` (-> ``[n, S]``)."""
    if key.ndim == 0:
        return jax.random.split(key, n)
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, n))(key), 0, 1)


def frames_per_collect(cfg) -> int:
    """``num_envs * steps_per_collect`` of a Q-learner's config, checked to divide ``log_every``
    (a chunk is a whole number of collect iterations)."""
    per_collect = cfg.num_envs * cfg.steps_per_collect
    if cfg.log_every % per_collect:
        raise ValueError(f"log_every={cfg.log_every} must be a multiple of num_envs * steps_per_collect "
                         f"= {per_collect}")
    return per_collect


class Agent(Protocol):
    """What ``run_chunks`` drives (see the module docstring)."""

    cfg: Any

    def chunk(self, state: Any) -> tuple[Any, dict]: ...

    def evaluate(self, params: Any, key: jax.Array) -> Any: ...


class QLearner(abc.ABC):
    """Epsilon schedule, target-network step, one collect+learn iteration and a jitted-chunk body
    of a Q-learning agent; subclasses implement ``init_params`` and ``update``."""

    cfg: Any
    collector: Any
    rb: Any
    tx: optax.GradientTransformation
    #: collected batch -> what ``add`` receives, for layout changes ``ReplayBuffer(keys=...)``
    #: cannot express (None: the batch as collected)
    select: Callable | None = None

    @abc.abstractmethod
    def init_params(self, key: jax.Array) -> Any:
        """Fresh network parameters."""

    @abc.abstractmethod
    def update(self, state: QLearnerState, key: jax.Array) -> tuple[QLearnerState, jax.Array]:
        """One learning step from ``state`` (sample, loss, ``apply_grads``); returns the new state and the loss."""

    def _stored(self, batch):
        return batch if self.select is None else self.select(batch)

    def init(self, key: jax.Array) -> QLearnerState:
        """Fresh state: params from ``self.init_params``, target a copy, empty buffer."""
        k_net, k_col, k_run = jax.random.split(key, 3)
        params = self.init_params(k_net)
        cstate = self.collector.init(k_col)
        pp = {"q": params, "eps": jnp.float32(1.0)}
        example = jax.eval_shape(lambda c: self._stored(self.collector.collect(c, pp)[1]), cstate)
        return QLearnerState(params=params, target=jax.tree.map(jnp.copy, params), opt=self.tx.init(params),
                             buffer=self.rb.init(example), collector=cstate, key=k_run,
                             updates=jnp.zeros((), jnp.int32))

    def epsilon(self, frames):
        cfg = self.cfg
        steps = max(1, int(cfg.eps_fraction * cfg.total_frames))
        return optax.linear_schedule(cfg.eps_start, cfg.eps_end, steps)(frames)

    def apply_grads(self, s: QLearnerState, grads: Any, buf: Any) -> QLearnerState:
        """The state after one optax step on ``grads``: counter advanced and the target moved,
        by Polyak averaging (``target_tau < 1``, every update) or by a hard copy every
        ``target_update_every`` updates (``target_tau == 1``)."""
        updates, opt = self.tx.update(grads, s.opt, s.params)
        params = optax.apply_updates(s.params, updates)
        n = s.updates + 1
        tau = self.cfg.target_tau
        if tau < 1.0:
            target = optax.incremental_update(params, s.target, tau)
        else:
            copy = n % self.cfg.target_update_every == 0
            target = jax.tree.map(lambda t, p: jnp.where(copy, p, t), s.target, params)
        return dataclasses.replace(s, params=params, target=target, opt=opt, buffer=buf, updates=n)

    def _iteration(self, s, _):
        cfg = self.cfg
        pp = {"q": s.params, "eps": self.epsilon(s.collector.frames)}
        cstate, batch = self.collector.collect(s.collector, pp)
        s = dataclasses.replace(s, collector=cstate, buffer=self.rb.add(s.buffer, self._stored(batch)))
        done = batch["next"]["done"]
        ep_sum = jnp.sum(jnp.where(done, batch["next"]["episode_reward"], 0.0))
        ep_n = jnp.sum(done, dtype=jnp.int32)

        def learn(s):
            def one(s, _):
                key, k = jax.random.split(s.key)
                return self.update(dataclasses.replace(s, key=key), k)

            s, losses = jax.lax.scan(one, s, None, length=cfg.updates_per_collect)
            return s, losses.mean()

        # Learn only once the buffer can give a batch: an empty or too-short buffer samples masked
        # zeros by design (info["mask"] False), and an update on them would train on padding.
        ready = (cstate.frames >= cfg.learning_starts) & self.rb.can_sample(s.buffer)
        s, loss = jax.lax.cond(ready, learn, lambda s: (s, jnp.float32(jnp.nan)), s)
        return s, (ep_sum, ep_n, loss)

    def _chunk(self, s):
        """``log_every`` frames of training; returns the new state and the chunk's metrics."""
        n = self.cfg.log_every // (self.cfg.num_envs * self.cfg.steps_per_collect)
        s, (ep_sum, ep_n, loss) = jax.lax.scan(self._iteration, s, None, length=n)
        n_ep = ep_n.sum()
        return s, {"return": ep_sum.sum() / jnp.maximum(n_ep, 1), "episodes": n_ep, "loss": jnp.nanmean(loss)}


class Seeds:
    """``agent`` trained on several seeds at once: the same ``cfg``/``init``/``chunk``/``evaluate``
    interface over a state whose leaves carry a leading ``[S]`` seed axis (``jax.vmap``), so a
    sweep costs one compilation and batched matmuls instead of ``S`` separate processes."""

    def __init__(self, agent):
        self.agent, self.cfg = agent, agent.cfg
        self.init = jax.vmap(agent.init)
        self.chunk = jax.jit(jax.vmap(agent._chunk), donate_argnums=0)
        self.evaluate = jax.jit(jax.vmap(agent._evaluate))


def run_chunks(agent: Agent, state, key, *, quiet: bool, desc: str, on_eval: Callable | None = None):
    """Train ``agent`` (or ``Seeds(agent)``) from ``state`` for ``ceil(total_frames / log_every)``
    chunks, with a greedy evaluation every ``eval_every`` frames (and after the last chunk), each on
    a key split off ``key``.

    ``on_eval(state, eval_return)`` is called after each evaluation. Returns ``(state, key,
    frames_curve, returns_curve, losses, train_time)``: evaluation returns are floats, or ``[S]``
    arrays for several seeds; ``losses`` holds one mean loss per chunk; ``train_time`` is the
    seconds spent in chunks after the first (which includes compilation).
    """
    cfg = agent.cfg
    n_chunks = -(-cfg.total_frames // cfg.log_every)
    eval_chunks = max(1, cfg.eval_every // cfg.log_every)
    frames_curve, returns_curve, losses = [], [], []
    recent: float | np.ndarray = np.nan  # per seed: the latest mean return where an episode finished
    last_eval = np.nan
    train_time = 0.0
    bar = _cli.progress_bar(n_chunks * cfg.log_every, quiet, desc)
    try:
        for i in range(n_chunks):
            if i == 0:  # the first call compiles the whole training step: say so
                bar.set_description(f"{desc} (compiling the jitted step)")
                bar.refresh()
            tc = time.perf_counter()
            state, m = agent.chunk(state)
            m = jax.device_get(m)
            dt = time.perf_counter() - tc
            if i == 0:
                bar.set_description(desc)
            else:
                train_time += dt
            losses.append(float(np.nanmean(m["loss"])))
            # per seed: the latest chunk's mean return where it finished an episode
            recent = np.where(np.asarray(m["episodes"]) > 0, m["return"], recent)
            frames = (i + 1) * cfg.log_every
            if (i + 1) % eval_chunks == 0 or i == n_chunks - 1:
                key, k = split(key)
                last_eval = jax.device_get(agent.evaluate(state.params, k))
                frames_curve.append(frames)
                returns_curve.append(float(last_eval) if np.ndim(last_eval) == 0 else np.asarray(last_eval))
                if on_eval is not None:
                    on_eval(state, returns_curve[-1])
                if not quiet:
                    bar.write(f"frames {frames:>8d}  eval return {_cli.fmt(last_eval)}  train return "
                              f"{_cli.fmt(recent)}  loss {losses[-1]:.4f}")
            bar.set_postfix({"fps": f"{cfg.log_every * max(1, np.size(last_eval)) / dt:,.0f}",
                             "return": f"{float(np.nanmean(recent)):.1f}",
                             "eval": f"{float(np.mean(last_eval)):.1f}"}, refresh=False)
            bar.update(cfg.log_every)
    finally:
        bar.close()
    return state, key, frames_curve, returns_curve, losses, train_time
