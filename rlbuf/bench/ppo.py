"""PPO benchmark: ``rlbuf.examples.ppo`` (Collector + ``rlbuf.returns.gae`` + ReplayBuffer with
SamplerWithoutReplacement) vs a hand-written PureJaxRL-style PPO loop of the same configuration.

The reference shares the example's network, loss, optimizer and evaluation, and writes the
data path by hand as PureJaxRL does: a ``lax.scan`` over vmapped ``env.step`` (gymnax
auto-reset), a time-major reverse-scan GAE, and minibatches from a permutation of the
flattened batch. Its GAE has the example's semantics (V of ``info["final_observation"]``
bootstraps truncations), so both loops do the same learning work per frame; time per frame
measures what rlbuf's data layer costs (trajectory ids, step counts, the ring buffer and its
sampler state), compile excluded.

Run: ``python -m rlbuf.bench.ppo`` (``--quick`` for a smoke run); ``--solve`` trains both for
the full budget on 5 vmapped seeds and prints frames to reach a greedy return of 475, the
last parameters' greedy returns and frames/s (recorded in ``BENCHMARKS.md`` and
``docs/learning_curves.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.bench._timing import Row, print_rows, threaded
from rlbuf.examples import ppo


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RefState:
    params: Any
    opt: Any
    env_state: Any
    obs: jax.Array  # [B, obs_dim]
    ep_return: jax.Array  # [B] running return of each env's episode
    key: jax.Array


class Reference(ppo.PPO):
    """PureJaxRL-style PPO: the network, optimizer, env, chunk scan and evaluation are
    ``ppo.PPO``'s (so ``ppo.train`` drives it); the state and one iteration are hand-written."""

    def init_one(self, key):
        k_net, k_env, k_run = jax.random.split(key, 3)
        params = self.net.init(k_net, jnp.zeros((self.obs_dim,), jnp.float32))
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(k_env, self.cfg.num_envs), self.env_params)
        return RefState(params=params, opt=self.tx.init(params), env_state=env_state, obs=obs,
                        ep_return=jnp.zeros((self.cfg.num_envs,), jnp.float32), key=k_run)

    # PPO's driver (chunk scan, train) is reused with this class's own state type: not an LSP subtype
    def _iteration(self, s: RefState, x):  # type: ignore[override]
        return jax.vmap(self._iteration_one, in_axes=(0, None))(s, x)  # seeds vmapped, no conds to lose

    def _iteration_one(self, s: RefState, _):
        cfg = self.cfg
        B = cfg.num_envs

        def step(c, _):
            env_state, obs, ep_ret, key = c
            key, k_pol, k_env = jax.random.split(key, 3)
            logits, value = self.net.apply(s.params, obs)
            action = jax.random.categorical(k_pol, logits).astype(jnp.int32)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            nobs, env_state, reward, term, trunc, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, B), env_state, action, self.env_params)
            ep_ret = ep_ret + reward
            done = term | trunc
            tr = dict(obs=obs, action=action, log_prob=logp, value=value, reward=reward, term=term, done=done,
                      next_obs=info["final_observation"], ep_ret=ep_ret)
            return (env_state, nobs, jnp.where(done, 0.0, ep_ret), key), tr

        key, k_roll, k_upd = jax.random.split(s.key, 3)
        (env_state, obs, ep_ret, _), tr = jax.lax.scan(step, (s.env_state, s.obs, s.ep_return, k_roll), None,
                                                       length=cfg.steps_per_collect)  # leaves [T, B]
        _, next_value = self.net.apply(s.params, tr["next_obs"])

        def gae_step(carry, x):
            r, v, nv, term, done = x
            delta = r + cfg.gamma * jnp.where(term, 0.0, nv) - v
            carry = delta + cfg.gamma * cfg.gae_lambda * jnp.where(done, 0.0, carry)
            return carry, carry

        _, adv = jax.lax.scan(gae_step, jnp.zeros((B,)), (tr["reward"], tr["value"], next_value, tr["term"],
                                                          tr["done"]), reverse=True)
        data = dict(observation=tr["obs"], action=tr["action"], log_prob=tr["log_prob"], value=tr["value"],
                    advantage=adv, value_target=adv + tr["value"])
        data = jax.tree.map(lambda x: x.reshape((cfg.frames_per_iter,) + x.shape[2:]), data)
        grad_fn = jax.value_and_grad(lambda p, mb: ppo.ppo_loss(self.net, cfg, p, mb), has_aux=True)

        def epoch(c, k):
            perm = jax.random.permutation(k, cfg.frames_per_iter)
            mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.num_minibatches, -1) + x.shape[1:]), data)

            def update(c, mb):
                params, opt = c
                (loss, _), grads = grad_fn(params, mb)
                upd, opt = self.tx.update(grads, opt, params)
                return (jax.tree.map(lambda p, u: p + u, params, upd), opt), loss

            return jax.lax.scan(update, c, mbs)

        (params, opt), losses = jax.lax.scan(epoch, (s.params, s.opt), jax.random.split(k_upd, cfg.update_epochs))
        ep_sum = jnp.sum(jnp.where(tr["done"], tr["ep_ret"], 0.0))
        s = RefState(params=params, opt=opt, env_state=env_state, obs=obs, ep_return=ep_ret, key=key)
        return s, (ep_sum, jnp.sum(tr["done"], dtype=jnp.int32), losses.mean())


def _gae_time_major(r, v, nv, term, done, gamma, lmbda):
    """Hand-written PureJaxRL-style GAE on time-major ``[T, B]`` arrays (same semantics)."""
    def step(carry, x):
        r, v, nv, term, done = x
        carry = r + gamma * jnp.where(term, 0.0, nv) - v + gamma * lmbda * jnp.where(done, 0.0, carry)
        return carry, carry

    return jax.lax.scan(step, jnp.zeros_like(r[0]), (r, v, nv, term, done), reverse=True)[1]


def _reverse_assoc(a, b):
    """``returns._reverse_scan`` as a ``lax.associative_scan`` (log-depth, more work)."""
    def compose(later, earlier):  # y -> a_e + b_e * (a_l + b_l * y)
        return earlier[0] + earlier[1] * later[0], earlier[1] * later[1]

    return jax.lax.associative_scan(compose, (a, b), reverse=True, axis=a.ndim - 1)[0]


def gae_rows(quick: bool = False) -> list[Row]:
    """``rlbuf.returns.gae`` on time-last ``[B, T]`` vs a hand-written time-major scan on ``[T, B]``
    (PureJaxRL's layout: no transposes), and vs the same recurrence as an associative scan."""
    from rlbuf import returns

    rows = []
    for B, T in ([(4, 128)] if quick else [(4, 128), (64, 128), (1024, 64)]):
        rng = np.random.default_rng(0)
        r, v, nv = (jnp.asarray(rng.normal(size=(B, T)), jnp.float32) for _ in range(3))
        term = jnp.asarray(rng.random((B, T)) < 0.02)
        done = term | jnp.asarray(rng.random((B, T)) < 0.01)
        g, lam = 0.99, 0.95
        ours = jax.jit(lambda *a: returns.gae(*a, gamma=g, lmbda=lam)[0])
        tm = [x.T for x in (r, v, nv, term, done)]
        ref = jax.jit(lambda r, v, nv, term, done: _gae_time_major(r, v, nv, term, done, g, lam))
        np.testing.assert_allclose(ours(r, v, nv, term, done), ref(*tm).T, rtol=1e-4, atol=1e-4)

        def assoc(r, v, nv, term, done):
            delta = r + g * jnp.where(term, 0.0, nv) - v
            cut = done | term | (jnp.arange(T) == T - 1)
            return _reverse_assoc(delta, jnp.where(cut, 0.0, g * lam))

        assoc = jax.jit(assoc)
        np.testing.assert_allclose(assoc(r, v, nv, term, done), ours(r, v, nv, term, done), rtol=1e-4, atol=1e-4)
        a = (r, v, nv, term, done)
        t = _cpu_times({"ours": (ours, a), "ref": (ref, tm), "assoc": (assoc, a)}, 31 if quick else 201)
        for name, label in (("ref", "hand-written time-major scan [T, B]"),
                            ("assoc", "same recurrence, lax.associative_scan")):
            rows.append(Row("returns", f"gae [B, T] = [{B}, {T}], time last", label, t["ours"][0] * 1e6,
                            t[name][0] * 1e6, "call",
                            ("target ratio <= 1.1 at [4, 128]; " if name == "ref" and (B, T) == (4, 128) else "")
                            + f"process CPU time; min-of-repeats {t['ours'][1] / t[name][1]:.2f}×"))
    return rows


def _cpu_times(fns: dict, reps: int) -> dict:
    """``(median, min)`` process CPU seconds per call of each ``(fn, args)``, repeats interleaved
    (a call is a few µs: CPU time, not wall time, on a shared machine). The order rotates at
    every repeat: a µs call right after a heavier one (the associative scan) runs ~15% slower
    (caches), so a fixed order would charge that to whichever function comes next."""
    for f, a in fns.values():
        jax.block_until_ready(f(*a))
    samples: dict = {k: [] for k in fns}
    keys = list(fns)
    for i in range(reps):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            f, a = fns[k]
            t0 = time.process_time()
            jax.block_until_ready(f(*a))
            samples[k].append(time.process_time() - t0)
    return {k: (float(np.median(v)), min(v)) for k, v in samples.items()}


def run(quick: bool = False) -> list[Row]:
    """Time per frame of one jitted chunk (``log_every`` frames) for 1 seed and 5 vmapped seeds,
    and the GAE rows."""
    rows = gae_rows(quick)
    for seeds in ([1] if quick else [1, 5]):
        cfg = dataclasses.replace(ppo.PPOConfig(), num_seeds=seeds, log_every=2_048 if quick else 8_192)
        ours, ref = ppo.PPO(cfg), Reference(cfg)
        states = {"ours": ours.init(range(seeds)), "ref": ref.init(range(seeds))}
        fns = {"ours": lambda s: ours.chunk(s)[0], "ref": lambda s: ref.chunk(s)[0]}
        # process CPU time: wall times of one chunk vary 2x on the shared, loaded VM
        t = threaded(fns, states, repeats=2 if quick else 15, clock=time.process_time)
        frames = cfg.log_every * seeds
        us = {k: v[0] / frames * 1e6 for k, v in t.items()}
        mins = {k: v[1] / frames * 1e6 for k, v in t.items()}
        rows.append(Row(
            "ppo", f"CartPole-v1 PPO {cfg.num_envs}x{cfg.steps_per_collect}, {cfg.update_epochs}x"
                   f"{cfg.num_minibatches} minibatches, {seeds} seed(s) vmapped", "PureJaxRL-style loop",
            us["ours"], us["ref"], "frame",
            f"target ratio <= 1.1; process CPU time; ours {1 / us['ours']:.3f} Mframes/s, ref "
            f"{1 / us['ref']:.3f}; min-of-repeats {mins['ours'] / mins['ref']:.2f}×"))
    return rows


def solve(num_seeds: int = 5, total_frames: int | None = None) -> None:
    """Train the example and the reference for the full budget on ``num_seeds`` vmapped seeds."""
    cfg = dataclasses.replace(ppo.PPOConfig(), num_seeds=num_seeds, eval_every=8_192)
    if total_frames:
        cfg = dataclasses.replace(cfg, total_frames=total_frames)
    for name, cls in [("rlbuf", ppo.PPO), ("reference", Reference)]:
        out = ppo.train(cfg, quiet=True, agent_cls=cls)
        frames, curve = out["curve"]
        first = [ppo.frames_to_solve(frames, curve[:, j]) for j in range(num_seeds)]
        stay = [ppo.frames_to_solve(frames, curve[:, j], stay=True) for j in range(num_seeds)]
        final = out["final_returns"]
        print(f"{name}: last params greedy return {np.round(final, 1).tolist()} "
              f"({int((final >= ppo.SOLVED).sum())}/{num_seeds} >= {ppo.SOLVED:.0f}); eval >= {ppo.SOLVED:.0f} "
              f"first at frames {first}, from then on at {stay}; wall {out['wall_time']:.1f} s incl. compile; "
              f"training {out['frames_per_s']:,.0f} frames/s over {num_seeds} seeds", flush=True)
        step = max(1, len(frames) // 16)
        print("  frames " + " ".join(f"{f // 1000:>4d}k" for f in frames[step - 1::step]))
        for j in range(num_seeds):
            print(f"  seed {j} " + " ".join(f"{r:>5.0f}" for r in curve[step - 1::step, j]), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument("--solve", action="store_true", help="train both loops on 5 seeds instead of timing chunks")
    p.add_argument("--num-seeds", type=int, default=5)
    p.add_argument("--total-frames", type=int, default=None)
    a = p.parse_args(argv)
    if a.solve:
        solve(a.num_seeds, a.total_frames)
    else:
        print_rows(run(quick=a.quick), digits=3)


if __name__ == "__main__":
    main()
