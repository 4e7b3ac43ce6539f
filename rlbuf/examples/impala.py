"""IMPALA-style asynchronous actor-learner on gymnax CartPole-v1: ``MultiAsyncCollector`` actors,
a staleness-aware replay of their rollouts, V-trace with the stored behaviour log-probabilities.

Run it::

    python -m rlbuf.examples.impala                 # seed 0; prints the staleness distribution
    python -m rlbuf.examples.impala --seeds 0 1 2

- Actors: ``W`` workers of ``B`` envs, each on its own device (on CPU the devices come from
  ``--xla_force_host_platform_device_count``, set here before JAX starts); the learner runs
  on one more device. Every batch ``[B, T]`` carries the policy version its worker used at
  ``("collector", "policy_version")`` (``iterate``: ``update_policy_params`` increments it).
- Replay: each worker batch is one item (a rollout ``[B, T]``) of a ``PerWorkerReplayBuffer``
  (``proportional=True``: a worker that delivered its first batches late is not over-sampled)
  whose ``StalenessAwareSampler(max_staleness=...)`` draws rollouts by ``1 / (staleness + 1)``
  and never older than the bound; the learner's version is pushed with
  ``rlbuf.set_policy_version`` after every update, together with the parameters.
- Learner: ``rlbuf.returns.vtrace`` (rho/c clipped at 1) on each sampled rollout with
  ``log_rho = log pi(a|x) - stored log mu(a|x)``; policy gradient on the V-trace advantages
  (centred per batch, not divided by their std), value loss on the V-trace targets, entropy
  bonus; Adam with its step size annealed linearly to 0.

The last line per seed, ``final eval return: X``, is a greedy evaluation of the LAST
parameters. The staleness of every sampled rollout is counted and printed.

Measured (default config, 1.2M frames, 2-core machine under load; runs are not bit-reproducible,
the actor threads' timing decides which versions the rollouts carry): ``--seeds 0 1 2`` gave
500.0 / 496.9 / 500.0, a second run (one process per seed) 500.0 / 500.0 / 500.0, seeds 3, 4:
500.0 / 500.0. With the advantages also divided by their batch std (``scale_advantage=True``)
the same budget gave 495.8 / 224.3 / 500.0, and 374 / 491 / 493 at 800k frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImpalaConfig:
    """Hyper-parameters (frozen, hashable)."""

    seed: int = 0
    total_frames: int = 1_200_000
    num_workers: int = 2  # actor workers (one device each)
    num_envs: int = 16  # envs per worker
    rollout_len: int = 32  # T
    rollouts_per_worker: int = 8  # replay capacity per worker, in rollouts
    batch_rollouts: int = 4  # rollouts per learner step (a multiple of num_workers)
    updates_per_batch: int = 1  # learner steps per received batch
    max_staleness: int = 4
    lr: float = 6e-4  # annealed linearly to 0 over the run's learner steps
    gamma: float = 0.99
    ent_coef: float = 0.01
    # Divide the centred advantages by their batch std? Off: once the policy nears 500 the advantages
    # shrink to noise and the division blew that noise up to unit size (seed 1 fell to 224 at 1.2M frames).
    scale_advantage: bool = False
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    eval_episodes: int = 32
    quiet: bool = False


def _set_devices(n: int) -> None:
    """Ask XLA:CPU for ``n`` host devices (effective only before JAX's backend starts)."""
    flag = "--xla_force_host_platform_device_count"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={n}".strip()


def train(cfg: ImpalaConfig) -> dict:
    """Train one seed; returns ``{"eval_return", "staleness" (histogram dict), "frames",
    "updates", "actor_fps", "learner_ups", "versions_seen"}``."""
    import gymnax
    import jax
    import jax.numpy as jnp
    import optax

    from rlbuf import returns
    from rlbuf.buffers.replay_buffer import ReplayBuffer
    from rlbuf.collectors.async_ import MultiAsyncCollector
    from rlbuf.examples import _nets
    from rlbuf.examples.ppo import make_network
    from rlbuf.samplers.staleness import StalenessAwareSampler, set_policy_version
    from rlbuf.scaling.per_worker import PerWorkerReplayBuffer
    from rlbuf.storages import LazyTensorStorage

    devices = jax.devices()
    actors = devices[:-1][: cfg.num_workers] if len(devices) > 1 else devices
    learner = devices[-1]
    env, env_params = gymnax.make("CartPole-v1")
    n_actions = env.action_space(env_params).n
    net = make_network(n_actions, cfg.hidden)

    def policy(params, obs, key):
        logits, _ = net.apply(params, obs)
        action = jax.random.categorical(key, logits).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
        return action, {"log_prob": logp}

    W, B, T = cfg.num_workers, cfg.num_envs, cfg.rollout_len
    collector = MultiAsyncCollector([env] * W, policy, frames_per_batch=B * T, num_envs=B, env_params=env_params,
                                    devices=actors, storing_device=learner)
    rb = PerWorkerReplayBuffer(
        ReplayBuffer(storage=LazyTensorStorage(W * cfg.rollouts_per_worker), batch_size=cfg.batch_rollouts,
                     sampler=StalenessAwareSampler(max_staleness=cfg.max_staleness, version_key="version")),
        W, proportional=True)
    n_updates = max(1, cfg.total_frames // (B * T) * cfg.updates_per_batch)
    lr = optax.linear_schedule(cfg.lr, 0.0, n_updates)
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))

    key = jax.random.key(cfg.seed)
    k_init, k_coll, key = jax.random.split(key, 3)
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    params = jax.device_put(net.init(k_init, jnp.zeros((1, obs_dim))), learner)
    opt = jax.device_put(tx.init(params), learner)

    def to_item(batch):
        """One worker batch as one replay item: leaves ``[1, B, T, ...]`` and its version ``[1]``."""
        item = jax.tree_util.tree_map(lambda x: x[None], batch)
        return dict(item, version=batch["collector"]["policy_version"][:1, 0])

    def loss_fn(params, r):
        logits, value = net.apply(params, r["observation"])
        _, next_value = net.apply(params, r["next"]["observation"])
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, r["action"][..., None], -1)[..., 0]
        log_rho = jax.lax.stop_gradient(logp) - r["log_prob"]
        adv, target = returns.vtrace(r["next"]["reward"], jax.lax.stop_gradient(value),
                                     jax.lax.stop_gradient(next_value), r["next"]["terminated"], r["next"]["done"],
                                     log_rho, gamma=cfg.gamma, mask=r["mask"])
        m = r["mask"].astype(jnp.float32)
        n = jnp.maximum(m.sum(), 1.0)
        mean = (adv * m).sum() / n
        std = jnp.sqrt((jnp.square(adv - mean) * m).sum() / n) + 1e-8 if cfg.scale_advantage else 1.0
        pg = -(logp * (adv - mean) / std * m).sum() / n
        vl = 0.5 * (jnp.square(value - target) * m).sum() / n
        ent = -((jnp.exp(logp_all) * logp_all).sum(-1) * m).sum() / n
        return pg + cfg.vf_coef * vl - cfg.ent_coef * ent

    def learn(bstate, params, opt, key):
        bstate, rollouts, info = rb.sample(bstate, key)  # leaves [N, B, T, ...]
        flat = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), rollouts)
        mask = jnp.broadcast_to(info["mask"][:, None, None], (*info["mask"].shape, B, T)).reshape(-1, T)
        grads = jax.grad(loss_fn)(params, dict(flat, mask=mask))
        updates, opt = tx.update(grads, opt, params)
        return bstate, optax.apply_updates(params, updates), opt, info["staleness"], info["mask"]

    add = jax.jit(lambda s, w, b: rb.add_worker(s, w, to_item(b)), donate_argnums=0)
    learn = jax.jit(learn, donate_argnums=0)  # params stay alive: the actors may still read them
    can_sample = jax.jit(rb.can_sample)
    setv = jax.jit(set_policy_version, donate_argnums=0)

    def act(carry, obs):
        return jnp.argmax(net.apply(params_eval, obs)[0], -1), carry

    it = collector.iterate(k_coll, params, total_frames=cfg.total_frames)
    first = next(it)
    bstate = rb.init(to_item(first[1]))
    hist: dict = {}
    versions = set()
    ep_ret, ep_n = 0.0, 0  # episodes that ended in the received batches since the last print
    updates, t0, t_learn = 0, time.perf_counter(), 0.0
    pending = [first]
    for w, batch in _chain(pending, it):
        versions.add(int(np.asarray(batch["collector"]["policy_version"][0, 0])))
        if not cfg.quiet:
            done = np.asarray(batch["next"]["done"])
            ep_ret += float(np.asarray(batch["next"]["episode_reward"])[done].sum())
            ep_n += int(done.sum())
        bstate = add(bstate, w, batch)
        if not bool(can_sample(bstate)):
            continue
        t1 = time.perf_counter()
        for _ in range(cfg.updates_per_batch):
            key, k = jax.random.split(key)
            bstate, params, opt, stale, mask = learn(bstate, params, opt, k)
            for s in np.asarray(stale)[np.asarray(mask)]:
                hist[int(s)] = hist.get(int(s), 0) + 1
            updates += 1
        it.update_policy_params(params)  # the new version goes with the parameters
        bstate = setv(bstate, it.policy_version)
        t_learn += time.perf_counter() - t1
        if not cfg.quiet and updates % 200 == 0:
            print(f"frames {it.frames}  updates {updates}  train return {ep_ret / max(ep_n, 1):.1f}  "
                  f"staleness {dict(sorted(hist.items()))}", flush=True)
            ep_ret, ep_n = 0.0, 0
    wall = time.perf_counter() - t0
    params_eval = params
    ret = _nets.greedy_returns(env, env_params, jax.jit(act), (), jax.random.key(cfg.seed + 10_000),
                               cfg.eval_episodes, 500)
    return {"eval_return": float(np.mean(np.asarray(ret))), "staleness": dict(sorted(hist.items())),
            "frames": it.frames, "updates": updates, "actor_fps": it.frames / wall,
            "learner_ups": updates / max(t_learn, 1e-9), "versions_seen": sorted(versions),
            "worker_batches": list(it.batches_per_worker)}


def _chain(first: list, it):
    yield from first
    yield from it


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--total-frames", type=int, default=ImpalaConfig.total_frames)
    p.add_argument("--num-workers", type=int, default=ImpalaConfig.num_workers)
    p.add_argument("--max-staleness", type=int, default=ImpalaConfig.max_staleness)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    _set_devices(args.num_workers + 1)
    for seed in args.seeds:
        cfg = ImpalaConfig(seed=seed, total_frames=args.total_frames, num_workers=args.num_workers,
                           max_staleness=args.max_staleness, quiet=args.quiet)
        out = train(cfg)
        total = sum(out["staleness"].values())
        dist = {s: round(c / max(total, 1), 3) for s, c in out["staleness"].items()}
        print(f"seed {seed}: {out['frames']} frames, {out['updates']} updates, actor {out['actor_fps']:.0f} "
              f"frames/s, learner {out['learner_ups']:.1f} updates/s, batches per worker {out['worker_batches']}")
        print(f"seed {seed}: staleness of sampled rollouts (fraction): {dist}")
        print(f"final eval return: {out['eval_return']:.1f}", flush=True)


if __name__ == "__main__":
    main()
