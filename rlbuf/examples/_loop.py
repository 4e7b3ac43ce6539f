"""The training loop shared by the DQN examples (``dqn.py``, ``recurrent.py``).

``QLearnerLoop`` is a mixin for an agent with ``cfg`` (``eps_start``, ``eps_end``, ``eps_fraction``,
``total_frames``, ``learning_starts``, ``updates_per_collect``, ``target_update_every``, ``log_every``,
``num_envs``, ``steps_per_collect``), ``collector``, ``rb``, ``select`` (collected batch -> what is
stored) and ``init_params(key)``,
``_update(state, key) -> (state, loss)``; its state is a ``QLearnerState``: ``params``,
``target``, ``opt``, ``buffer``, ``collector``, ``key``, ``updates``. ``run_chunks`` is the
host-side progress/evaluation loop of ``train``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlbuf.examples import _nets
from rlbuf.replay_buffer import BufferState


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QLearnerState:
    """Everything the jitted training step carries (donated to it)."""

    params: Any
    target: Any
    opt: _nets.AdamState
    buffer: BufferState
    collector: Any
    key: jax.Array
    updates: jax.Array


class QLearnerLoop:
    """Epsilon schedule, target-network step, one collect+learn iteration and a jitted-chunk body."""

    def init(self, key: jax.Array) -> QLearnerState:
        """Fresh state: params from ``self.init_params``, target a copy, empty buffer."""
        k_net, k_col, k_run = jax.random.split(key, 3)
        params = self.init_params(k_net)
        cstate = self.collector.init(k_col)
        pp = {"q": params, "eps": jnp.float32(1.0)}
        example = jax.eval_shape(lambda c: self.select(self.collector.collect(c, pp)[1]), cstate)
        return QLearnerState(params=params, target=jax.tree.map(jnp.copy, params), opt=_nets.adam_init(params),
                             buffer=self.rb.init(example), collector=cstate, key=k_run,
                             updates=jnp.zeros((), jnp.int32))

    def epsilon(self, frames):
        cfg = self.cfg
        return _nets.linear_schedule(cfg.eps_start, cfg.eps_end, cfg.eps_fraction * cfg.total_frames, frames)

    def _step_done(self, s, params, opt, buf):
        """The state after an update to ``params``/``opt``: counter advanced, target copied every
        ``target_update_every`` updates."""
        updates = s.updates + 1
        copy = updates % self.cfg.target_update_every == 0
        target = jax.tree.map(lambda t, p: jnp.where(copy, p, t), s.target, params)
        return dataclasses.replace(s, params=params, target=target, opt=opt, buffer=buf, updates=updates)

    def _iteration(self, s, _):
        cfg = self.cfg
        pp = {"q": s.params, "eps": self.epsilon(s.collector.frames)}
        cstate, batch = self.collector.collect(s.collector, pp)
        s = dataclasses.replace(s, collector=cstate, buffer=self.rb.add(s.buffer, self.select(batch)))
        done = batch["next"]["done"]
        ep_sum = jnp.sum(jnp.where(done, batch["next"]["episode_reward"], 0.0))
        ep_n = jnp.sum(done, dtype=jnp.int32)

        def learn(s):
            def one(s, _):
                key, k = jax.random.split(s.key)
                return self._update(dataclasses.replace(s, key=key), k)

            s, losses = jax.lax.scan(one, s, None, length=cfg.updates_per_collect)
            return s, losses.mean()

        s, loss = jax.lax.cond(cstate.frames >= cfg.learning_starts, learn, lambda s: (s, jnp.float32(jnp.nan)), s)
        return s, (ep_sum, ep_n, loss)

    def _chunk(self, s):
        """``log_every`` frames of training; returns the new state and the chunk's metrics."""
        n = self.cfg.log_every // (self.cfg.num_envs * self.cfg.steps_per_collect)
        s, (ep_sum, ep_n, loss) = jax.lax.scan(self._iteration, s, None, length=n)
        n_ep = ep_n.sum()
        return s, {"return": ep_sum.sum() / jnp.maximum(n_ep, 1), "episodes": n_ep, "loss": jnp.nanmean(loss)}


def run_chunks(agent, state, key, *, quiet: bool, desc: str, on_eval: Callable | None = None):
    """Train ``agent`` from ``state`` for ``ceil(total_frames / log_every)`` chunks, with a greedy
    evaluation every ``eval_every`` frames (and after the last chunk), each on a key split off ``key``.

    ``on_eval(state, eval_return)`` is called after each evaluation. Returns ``(state, key,
    frames_curve, returns_curve, losses)`` (``losses``: one mean loss per chunk).
    """
    cfg = agent.cfg
    n_chunks = -(-cfg.total_frames // cfg.log_every)
    eval_chunks = max(1, cfg.eval_every // cfg.log_every)
    frames_curve, returns_curve, losses = [], [], []
    recent = last_eval = float("nan")
    bar = _nets.progress_bar(n_chunks * cfg.log_every, quiet, desc)
    try:
        for i in range(n_chunks):
            tc = time.perf_counter()
            state, m = agent.chunk(state)
            m = jax.device_get(m)
            dt = time.perf_counter() - tc
            losses.append(float(m["loss"]))
            if m["episodes"] > 0:
                recent = float(m["return"])
            frames = (i + 1) * cfg.log_every
            if (i + 1) % eval_chunks == 0 or i == n_chunks - 1:
                key, k = jax.random.split(key)
                last_eval = float(agent.evaluate(state.params, k))
                frames_curve.append(frames)
                returns_curve.append(last_eval)
                if on_eval is not None:
                    on_eval(state, last_eval)
                if not quiet:
                    bar.write(f"frames {frames:>8d}  eval return {last_eval:6.1f}  train return {recent:6.1f}  "
                              f"loss {losses[-1]:.4f}")
            bar.set_postfix({"fps": f"{cfg.log_every / dt:,.0f}", "return": f"{recent:.1f}",
                             "eval": f"{last_eval:.1f}"}, refresh=False)
            bar.update(cfg.log_every)
    finally:
        bar.close()
    return state, key, frames_curve, returns_curve, losses
