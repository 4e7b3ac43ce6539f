"""The training loop shared by the DQN examples (``dqn.py``, ``recurrent.py``).

``QLearnerLoop`` is a mixin for an agent with ``cfg`` (``eps_start``, ``eps_end``, ``eps_fraction``,
``total_frames``, ``learning_starts``, ``updates_per_collect``, ``target_update_every``,
``target_tau``, ``log_every``, ``num_envs``, ``steps_per_collect``), ``collector``, ``rb``,
``select`` (collected batch -> what ``add`` receives, for layout changes ``ReplayBuffer(keys=...)``
cannot express; None: the batch as collected), ``tx`` (an optax
optimizer), ``init_params(key)`` and ``_update(state, key) -> (state, loss)``; its state is a
``QLearnerState``: ``params``, ``target``, ``opt``, ``buffer``, ``collector``, ``key``,
``updates``. ``run_chunks`` is the host-side progress/evaluation loop of ``train``; ``Seeds``
trains one agent on several seeds at once (``jax.vmap`` over the whole state).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlbuf.examples import _nets
from rlbuf.replay_buffer import BufferState


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


class QLearnerLoop:
    """Epsilon schedule, target-network step, one collect+learn iteration and a jitted-chunk body."""

    select: Callable | None = None

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

    def _apply_grads(self, s, grads, buf):
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
                return self._update(dataclasses.replace(s, key=key), k)

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


def _fmt(x) -> str:
    x = np.asarray(x)
    return f"{float(x):6.1f}" if x.ndim == 0 else "[" + " ".join(f"{v:.0f}" for v in x) + "]"


def run_chunks(agent, state, key, *, quiet: bool, desc: str, on_eval: Callable | None = None):
    """Train ``agent`` (or ``Seeds(agent)``) from ``state`` for ``ceil(total_frames / log_every)``
    chunks, with a greedy evaluation every ``eval_every`` frames (and after the last chunk), each on
    a key split off ``key``.

    ``on_eval(state, eval_return)`` is called after each evaluation. Returns ``(state, key,
    frames_curve, returns_curve, losses)``: evaluation returns are floats, or ``[S]`` arrays for
    ``Seeds``; ``losses`` holds one mean loss per chunk.
    """
    cfg = agent.cfg
    n_chunks = -(-cfg.total_frames // cfg.log_every)
    eval_chunks = max(1, cfg.eval_every // cfg.log_every)
    frames_curve, returns_curve, losses = [], [], []
    recent = last_eval = float("nan")
    bar = _nets.progress_bar(n_chunks * cfg.log_every, quiet, desc)
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
            losses.append(float(np.nanmean(m["loss"])))
            if np.all(m["episodes"] > 0):
                recent = float(np.mean(m["return"]))
            frames = (i + 1) * cfg.log_every
            if (i + 1) % eval_chunks == 0 or i == n_chunks - 1:
                key, k = split(key)
                last_eval = jax.device_get(agent.evaluate(state.params, k))
                frames_curve.append(frames)
                returns_curve.append(float(last_eval) if np.ndim(last_eval) == 0 else np.asarray(last_eval))
                if on_eval is not None:
                    on_eval(state, returns_curve[-1])
                if not quiet:
                    bar.write(f"frames {frames:>8d}  eval return {_fmt(last_eval)}  train return {recent:6.1f}  "
                              f"loss {losses[-1]:.4f}")
            bar.set_postfix({"fps": f"{cfg.log_every / dt:,.0f}", "return": f"{recent:.1f}",
                             "eval": f"{float(np.mean(last_eval)):.1f}"}, refresh=False)
            bar.update(cfg.log_every)
    finally:
        bar.close()
    return state, key, frames_curve, returns_curve, losses

