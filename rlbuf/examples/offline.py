"""Offline-to-online RL on CartPole: a Minari dataset made locally, discrete CQL offline, then
online fine-tuning that mixes the offline and online buffers half and half (RLPD's symmetric
sampling) with ``rlbuf.ReplayBufferEnsemble``.

Run it (needs ``pip install 'rlbuf[offline]'``; nothing is downloaded)::

    python -m rlbuf.examples.offline
    python -m rlbuf.examples.offline --dataset-steps 5000 --offline-updates 2000 --online-frames 8192

1. **Dataset.** ``minari.DataCollector`` records ``dataset_steps`` steps of gymnasium's
   ``CartPole-v1`` under a noisy heuristic behaviour policy (push toward the pole's lean,
   random with probability ``behaviour_eps``), into a temporary ``MINARI_DATASETS_PATH`` that
   is deleted at the end (``--keep-dataset DIR`` keeps it).
2. **Offline.** ``rlbuf.datasets.fill_buffer`` loads it chunk by chunk into a
   ``ReplayBuffer(LazyTensorStorage(N))``; ``offline_updates`` steps of double-DQN + the CQL
   regulariser ``cql_alpha * (logsumexp_a Q(s, a) - Q(s, a_data))`` (flax MLP, optax Adam),
   ``lax.scan``-ned inside one jitted call per ``log_every`` updates with the state donated.
3. **Online.** ``rlbuf.Collector`` on gymnax's CartPole-v1 (same dynamics) with an
   epsilon-greedy policy writes into an online ``ReplayBuffer(ndim=2)``; every update samples
   ``ReplayBufferEnsemble(offline, online, num_per_buffer=(B/2, B/2))``. The loss keeps the CQL
   term (``online_cql_alpha``, default 1): with 0 (plain double DQN on the mixed batch, as RLPD
   does with its own regularised critics) the 500-return offline policy unlearned to ~140 within
   16k frames in our run, a known offline-to-online dip. Collect -> ``add_to`` -> sample -> update
   is one ``jit``.

Returns are greedy evaluations on gymnax (``eval_episodes`` episodes, 500 steps at most). The
printed lines: the behaviour policy's mean dataset return, the return after offline training,
and ``final eval return: X`` after fine-tuning.

Bootstrapping uses ``("next","terminated")`` (a time-limit truncation is not terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.buffers.ensemble import ReplayBufferEnsemble
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.examples import _cli, _nets
from rlbuf.storages import LazyTensorStorage

#: What the learner stores from the collector's batch: the keys ``from_minari`` gives, so the
#: offline and online members sample batches of one structure (the ensemble concatenates them).
KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
        ("next", "truncated"), ("next", "done"), ("collector", "traj_ids"))


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """Hyper-parameters (frozen, hashable)."""

    seed: int = 0
    dataset_steps: int = 20_000
    behaviour_eps: float = 0.6
    offline_updates: int = 6_000
    online_frames: int = 16_384
    num_envs: int = 8
    steps_per_collect: int = 4
    updates_per_collect: int = 4
    online_buffer: int = 50_000
    batch_size: int = 256
    hidden: int = 128
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.01
    cql_alpha: float = 1.0
    online_cql_alpha: float = 1.0
    eps: float = 0.05
    log_every: int = 1_000
    eval_episodes: int = 16


# ---------------------------------------------------------------------------- dataset


def heuristic_action(obs: np.ndarray) -> int:
    """Push toward the pole's lean (angle + angular velocity): ~200-500 on CartPole alone."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def make_dataset(dataset_id: str, steps: int, eps: float, seed: int):
    """Record ``steps`` CartPole-v1 steps with ``minari.DataCollector`` under the noisy heuristic;
    returns the ``MinariDataset`` (in the current ``MINARI_DATASETS_PATH``)."""
    import warnings

    import gymnasium as gym
    import minari

    env = minari.DataCollector(gym.make("CartPole-v1"))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = int(rng.integers(2)) if rng.random() < eps else heuristic_action(obs)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            # No autoseed: the env's generator continues from ``seed``, so the dataset is reproducible.
            obs, _ = env.reset(options={"minari_autoseed": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari's notes on metadata left unset
        ds = env.create_dataset(dataset_id, algorithm_name=f"heuristic+eps{eps}", author="rlbuf example",
                                author_email="-", code_permalink="rlbuf/examples/offline.py",
                                description="CartPole-v1, noisy heuristic policy")
    env.close()
    return ds


@contextlib.contextmanager
def minari_root(path: str | None):
    """``MINARI_DATASETS_PATH`` set to ``path`` (a fresh temporary directory when None, deleted
    afterwards); the previous value is restored."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    with contextlib.ExitStack() as stack:
        root = path or stack.enter_context(tempfile.TemporaryDirectory(prefix="rlbuf-minari-"))
        os.environ["MINARI_DATASETS_PATH"] = root
        try:
            yield root
        finally:
            if old is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old


def select(batch: dict) -> dict:
    out: dict = {}
    for k in KEYS:
        if isinstance(k, tuple):
            out.setdefault(k[0], {})[k[1]] = batch[k[0]][k[1]]
        else:
            out[k] = batch[k]
    return out


# ---------------------------------------------------------------------------- learner


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Learner:
    params: Any
    target: Any
    opt: Any


class Agent:
    """Networks (flax), optimiser (optax), buffers, collector and the jitted chunks for a config."""

    def __init__(self, cfg: OfflineConfig, n_offline: int):
        import flax.linen as nn
        import gymnax
        import optax

        from rlbuf.collectors import Collector

        if cfg.batch_size % 2:
            raise ValueError(f"batch_size={cfg.batch_size} must be even (half offline, half online)")
        self.cfg = cfg
        self.env, self.env_params = gymnax.make("CartPole-v1")
        hidden = cfg.hidden

        class QNet(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(nn.Dense(hidden)(x))
                x = nn.relu(nn.Dense(hidden)(x))
                return nn.Dense(2)(x)

        self.net = QNet()
        self.tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(cfg.lr))
        self.offline_rb = ReplayBuffer(storage=LazyTensorStorage(n_offline), batch_size=cfg.batch_size)
        online_rb = ReplayBuffer(storage=LazyTensorStorage(cfg.online_buffer, ndim=2), batch_size=cfg.batch_size // 2)
        half = cfg.batch_size // 2
        self.ens = ReplayBufferEnsemble(self.offline_rb, online_rb, num_per_buffer=(half, half))

        def policy(pp, obs, key):
            greedy = jnp.argmax(self.net.apply(pp["q"], obs), axis=-1).astype(jnp.int32)
            k_a, k_e = jax.random.split(key)
            rand = jax.random.randint(k_a, greedy.shape, 0, 2, dtype=jnp.int32)
            return jnp.where(jax.random.uniform(k_e, greedy.shape) < pp["eps"], rand, greedy)

        self.collector = Collector(self.env, policy, frames_per_batch=cfg.num_envs * cfg.steps_per_collect,
                                   num_envs=cfg.num_envs, env_params=self.env_params)
        self.offline_chunk = jax.jit(self._offline_chunk, static_argnums=2, donate_argnums=0)
        self.online_chunk = jax.jit(self._online_chunk, static_argnums=2, donate_argnums=0)
        self.evaluate = jax.jit(self._evaluate)

    def init_learner(self, key) -> Learner:
        params = self.net.init(key, jnp.zeros((1, 4), jnp.float32))
        # Distinct arrays: the learner is donated, and one buffer may not be donated twice.
        return Learner(params, jax.tree.map(jnp.copy, params), self.tx.init(params))

    def _loss(self, params, target, batch, alpha):
        cfg = self.cfg
        q = self.net.apply(params, batch["observation"])
        q_a = jnp.take_along_axis(q, batch["action"][:, None], axis=-1)[:, 0]
        nobs = batch["next"]["observation"]
        a_star = jnp.argmax(self.net.apply(params, nobs), axis=-1)
        q_next = jnp.take_along_axis(self.net.apply(target, nobs), a_star[:, None], axis=-1)[:, 0]
        not_term = 1.0 - batch["next"]["terminated"].astype(jnp.float32)
        y = jax.lax.stop_gradient(batch["next"]["reward"] + cfg.gamma * not_term * q_next)
        td = q_a - y
        huber = jnp.where(jnp.abs(td) < 1.0, 0.5 * td**2, jnp.abs(td) - 0.5).mean()
        cql = (jax.nn.logsumexp(q, axis=-1) - q_a).mean()
        return huber + alpha * cql

    def _learn(self, lrn: Learner, batch, alpha) -> tuple[Learner, jax.Array]:
        import optax

        loss, grads = jax.value_and_grad(self._loss)(lrn.params, lrn.target, batch, alpha)
        updates, opt = self.tx.update(grads, lrn.opt, lrn.params)
        params = optax.apply_updates(lrn.params, updates)
        target = optax.incremental_update(params, lrn.target, self.cfg.tau)
        return Learner(params, target, opt), loss

    def _offline_chunk(self, carry, key, n: int):
        """``n`` CQL updates on batches of the offline buffer."""

        def body(c, k):
            lrn, buf = c
            buf, batch, _ = self.offline_rb.sample(buf, k)
            lrn, loss = self._learn(lrn, batch, self.cfg.cql_alpha)
            return (lrn, buf), loss

        carry, losses = jax.lax.scan(body, carry, jax.random.split(key, n))
        return carry, losses.mean()

    def _online_chunk(self, carry, key, n: int):
        """``n`` iterations of collect -> add to the online member -> ``updates_per_collect``
        updates on ensemble batches (half offline, half online)."""
        cfg = self.cfg

        def update(c, k):
            # No can_sample gate: the offline member is full and the online one got this
            # iteration's batch just before (an empty member would give masked zeros).
            lrn, ens = c
            ens, batch, info = self.ens.sample(ens, k)
            lrn, loss = self._learn(lrn, batch, cfg.online_cql_alpha)
            return (lrn, ens), (loss, jnp.mean(info["buffer"] == 0))

        def body(c, k):
            lrn, ens, cstate = c
            cstate, batch = self.collector.collect(cstate, {"q": lrn.params, "eps": jnp.float32(cfg.eps)})
            ens = self.ens.add_to(ens, 1, select(batch))
            (lrn, ens), (loss, frac) = jax.lax.scan(update, (lrn, ens), jax.random.split(k, cfg.updates_per_collect))
            return (lrn, ens, cstate), (loss.mean(), frac.mean())

        carry, (loss, frac) = jax.lax.scan(body, carry, jax.random.split(key, n))
        return carry, loss.mean(), frac.mean()

    def _evaluate(self, params, key):
        act = lambda c, obs: (jnp.argmax(self.net.apply(params, obs), axis=-1).astype(jnp.int32), c)  # noqa: E731
        return _nets.greedy_returns(self.env, self.env_params, act, (), key, self.cfg.eval_episodes,
                                    int(self.env_params.max_steps_in_episode)).mean()


# ---------------------------------------------------------------------------- driver


def _chunks(total: int, size: int):
    while total > 0:
        yield min(size, total)
        total -= size


def train(cfg: OfflineConfig, *, quiet: bool = False, keep_dataset: str | None = None) -> dict:
    """Run the three phases; returns ``{"dataset_return", "offline_return", "final_return",
    "offline_fraction", "dataset_transitions", "wall_time"}``."""
    from rlbuf import datasets

    say = (lambda *a: None) if quiet else print
    t0 = time.perf_counter()
    key = jax.random.key(cfg.seed)
    with minari_root(keep_dataset):
        ds = make_dataset("cartpole/heuristic-v0", cfg.dataset_steps, cfg.behaviour_eps, cfg.seed)
        returns = [float(np.sum(ep.rewards)) for ep in ds.iterate_episodes()]
        n = ds.total_steps
        agent = Agent(cfg, n)
        offline = datasets.fill_buffer(agent.offline_rb, ds, progress=not quiet)
    # Every offline update samples this buffer: an empty one would give masked zeros by design.
    if not bool(agent.offline_rb.can_sample(offline)):
        raise ValueError("the offline dataset filled no transitions into the buffer")
    say(f"dataset: {n} transitions, {len(returns)} episodes, behaviour return {np.mean(returns):.1f}")

    key, k_init, k_col = jax.random.split(key, 3)
    lrn = agent.init_learner(k_init)
    carry = (lrn, offline)
    for i, m in enumerate(_chunks(cfg.offline_updates, cfg.log_every)):
        key, k = jax.random.split(key)
        carry, loss = agent.offline_chunk(carry, k, m)
        say(f"offline updates {min((i + 1) * cfg.log_every, cfg.offline_updates)}: loss {float(loss):.3f}")
    lrn, offline = carry
    key, k = jax.random.split(key)
    offline_return = float(agent.evaluate(lrn.params, k))
    say(f"offline eval return: {offline_return:.1f}")

    per_collect = cfg.num_envs * cfg.steps_per_collect
    # The filled offline state joins a new online one; from_states checks that their batches
    # concatenate (same keys, dtypes and trailing shapes: KEYS are what from_minari gives).
    ens = agent.ens.from_states(offline, agent.ens.members[1].init(select_example(agent)))
    online = (lrn, ens, agent.collector.init(k_col))
    iters = cfg.online_frames // per_collect
    log_iters = max(1, cfg.log_every // cfg.updates_per_collect)
    frac = jnp.float32(0.5)
    done = 0
    for m in _chunks(iters, log_iters):
        key, k = jax.random.split(key)
        online, loss, frac = agent.online_chunk(online, k, m)
        done += m
        say(f"online frames {done * per_collect}: loss {float(loss):.3f}, offline share {float(frac):.2f}")
    lrn = online[0]
    key, k = jax.random.split(key)
    final = float(agent.evaluate(lrn.params, k))
    wall = time.perf_counter() - t0
    say(f"wall time {wall:.1f} s")
    say(f"final eval return: {final:.1f}")
    return {"dataset_return": float(np.mean(returns)), "offline_return": offline_return, "final_return": final,
            "offline_fraction": float(frac), "dataset_transitions": n, "wall_time": wall}


def select_example(agent: Agent) -> dict:
    """An abstract collector batch (``ShapeDtypeStruct``s) restricted to ``KEYS``."""
    shapes = jax.eval_shape(lambda k: agent.collector.collect(agent.collector.init(k),
                                                              {"q": agent.init_learner(k).params, "eps": 0.0})[1],
                            jax.random.key(0))
    return select(shapes)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    defaults = OfflineConfig()
    for f in dataclasses.fields(OfflineConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))
    p.add_argument("--keep-dataset", default=None, help="Minari root to write the dataset to (kept)")
    p.add_argument("--quiet", action="store_true")
    args = vars(p.parse_args(argv))
    quiet, keep = args.pop("quiet"), args.pop("keep_dataset")
    _cli.enable_compilation_cache()
    return train(OfflineConfig(**args), quiet=quiet, keep_dataset=keep)


if __name__ == "__main__":
    main()
