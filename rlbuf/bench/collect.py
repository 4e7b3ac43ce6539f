"""Collector benchmark: ``rlbuf.Collector`` vs a hand-written PureJaxRL-style rollout.

Both run CartPole-v1 (gymnax) with the same small MLP policy (4-64-64-2, sampled action and
log-prob) and do the same semantic work per step: one batched policy forward pass, the env
step with auto-reset, and storing observation, action, log-prob, reward, terminated,
truncated, done and the true next observation. The collector additionally tracks trajectory
ids, step counts and episode returns and emits TorchRL's ``[B, T]`` layout (the reference
keeps scan's time-major ``[T, B]``). Times are per batch, compile excluded.

The GRU rows run a recurrent policy (flax ``nn.GRUCell``, 64 units, and a linear head)
whose state the collector carries (``policy_carry``, reset at episode starts, stored with
``store_carry=True``) against a hand-written scan doing the same (carry reset where done,
the received carry stored).

Run: ``python -m rlbuf.bench.collect`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import importlib.util
import time

import jax
import jax.numpy as jnp

from rlbuf.bench._timing import Row, interleaved, main_for, threaded
from rlbuf.collectors import Collector

CASES = [(1, 1000), (64, 128), (1024, 64)]
QUICK_CASES = [(1, 100), (16, 32)]


def mlp_init(key, sizes=(4, 64, 64, 2)):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append((jax.random.normal(k, (a, b)) / jnp.sqrt(a), jnp.zeros((b,))))
    return params


def mlp_policy(params, obs, key):
    h = obs
    for w, b in params[:-1]:
        h = jnp.tanh(h @ w + b)
    w, b = params[-1]
    logits = h @ w + b
    action = jax.random.categorical(key, logits).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
    return action, {"sample_log_prob": logp}


def _reference(env, env_params, num_envs, T):
    """PureJaxRL-style rollout: ``lax.scan`` over ``env.step`` (auto-reset), time-major."""
    single = num_envs == 1

    def step_fn(k, s, a):
        return env.step(k, s, a, env_params)

    def rollout(carry, policy_params):
        def body(c, _):
            env_state, obs, key = c
            key, k_pol, k_env = jax.random.split(key, 3)
            action, extras = mlp_policy(policy_params, obs, k_pol)
            if single:
                out = step_fn(k_env, env_state, action)
            else:
                out = jax.vmap(step_fn)(jax.random.split(k_env, num_envs), env_state, action)
            nobs, env_state, reward, term, trunc, info = out
            tr = dict(observation=obs, action=action, reward=reward, terminated=term,
                      truncated=trunc, done=term | trunc,
                      next_observation=info["final_observation"], **extras)
            return (env_state, nobs, key), tr

        return jax.lax.scan(body, carry, None, length=T)

    def init(key):
        k0, k1 = jax.random.split(key)
        if single:
            obs, st = env.reset(k1, env_params)
        else:
            obs, st = jax.vmap(env.reset, in_axes=(0, None))(
                jax.random.split(k1, num_envs), env_params)
        return st, obs, k0

    return init, rollout


GRU_HIDDEN = 64
GRU_CASES = [(1, 1000), (64, 128)]
GRU_QUICK_CASES = [(16, 32)]


def _gru_net():
    import flax.linen as nn

    class GRUPolicyNet(nn.Module):
        @nn.compact
        def __call__(self, h, obs):
            h, y = nn.GRUCell(features=GRU_HIDDEN)(h, obs)
            return h, nn.Dense(2)(y)

    return GRUPolicyNet()


def _gru_policy(net):
    def policy(params, obs, key, h):
        h, logits = net.apply(params, h, obs)
        action = jax.random.categorical(key, logits).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
        return action, {"sample_log_prob": logp}, h

    return policy


def _gru_reference(env, env_params, policy, num_envs, T):
    """Hand-written recurrent rollout: the same GRU policy, carry reset where done, the carry
    the policy received stored; auto-reset env, time-major."""
    single = num_envs == 1

    def step_fn(k, s, a):
        return env.step(k, s, a, env_params)

    def rollout(carry, policy_params):
        def body(c, _):
            env_state, obs, h, key = c
            key, k_pol, k_env = jax.random.split(key, 3)
            action, extras, h_new = policy(policy_params, obs, k_pol, h)
            if single:
                out = step_fn(k_env, env_state, action)
            else:
                out = jax.vmap(step_fn)(jax.random.split(k_env, num_envs), env_state, action)
            nobs, env_state, reward, term, trunc, info = out
            done = term | trunc
            tr = dict(observation=obs, action=action, reward=reward, terminated=term, truncated=trunc, done=done,
                      next_observation=info["final_observation"], carry=h, **extras)
            h_next = jnp.where(done[..., None], jnp.zeros_like(h_new), h_new)
            return (env_state, nobs, h_next, key), tr

        return jax.lax.scan(body, carry, None, length=T)

    def init(key):
        k0, k1 = jax.random.split(key)
        lead = () if single else (num_envs,)
        if single:
            obs, st = env.reset(k1, env_params)
        else:
            obs, st = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k1, num_envs), env_params)
        return st, obs, jnp.zeros(lead + (GRU_HIDDEN,)), k0

    return init, rollout


def gru_rows(quick: bool = False) -> list[Row]:
    """Collector with a GRU carry vs a hand-written recurrent scan (issue 15: target <= 1.1x)."""
    import gymnax

    env, env_params = gymnax.make("CartPole-v1")
    net = _gru_net()
    policy = _gru_policy(net)
    params = net.init(jax.random.key(1), jnp.zeros((GRU_HIDDEN,)), jnp.zeros((4,)))
    rows = []
    for num_envs, T in GRU_QUICK_CASES if quick else GRU_CASES:
        n = None if num_envs == 1 else num_envs

        def init_fn(b):
            return jnp.zeros((() if b is None else (b,)) + (GRU_HIDDEN,))

        c = Collector(env, policy, frames_per_batch=num_envs * T, env_params=env_params, num_envs=n,
                      policy_carry=init_fn, store_carry=True)
        ours = jax.jit(c.collect)
        ref_init, ref_rollout = _gru_reference(env, env_params, policy, num_envs, T)
        ref = jax.jit(ref_rollout)
        # each carries its own state from call to call (the batch is computed and dropped)
        fns = {"ours": lambda s, p: ours(s, p)[0], "ref": lambda s, p: ref(s, p)[0]}
        states = {"ours": c.init(jax.random.key(0)), "ref": ref_init(jax.random.key(0))}
        refs = [("ref", "hand-written recurrent scan (time-major)")]
        if n is not None:  # the same scan also emitting TorchRL's [B, T] layout, as the collector does
            ref_bt = jax.jit(lambda s, p: (lambda o: (o[0], jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), o[1])))(
                ref_rollout(s, p)))
            fns["ref_bt"] = lambda s, p: ref_bt(s, p)[0]
            states["ref_bt"] = ref_init(jax.random.key(0))
            refs.append(("ref_bt", "same scan + [B, T] layout (as ours)"))
        # process CPU time: on the shared 2-core VM wall times of one call vary by 4x with load
        t = threaded(fns, states, params, repeats=3 if quick else 31, clock=time.process_time)
        frames = num_envs * T
        for name, label in refs:
            (med_o, min_o), (med_r, min_r) = t["ours"], t[name]
            rows.append(Row(
                "collect", f"CartPole-v1 GRU-64 carry {num_envs}x{T} (envs x steps)", label,
                med_o * 1e6, med_r * 1e6, "batch",
                f"target ratio <= 1.1; process CPU time; min-of-repeats {min_o * 1e6:,.0f} vs "
                f"{min_r * 1e6:,.0f} µs ({min_o / min_r:.2f}×); ours {frames / med_o / 1e6:.2f} Mframes/s",
            ))
    return rows


def _torchrl_rows(quick: bool) -> list[Row]:
    """Random-policy CartPole: rlbuf's jitted ``Collector`` (gymnax) against TorchRL's
    ``Collector`` (gymnasium through ``GymEnv``, its usual use), frames per second."""
    name = "TorchRL Collector, random policy, 1 env x 1000 (gymnasium CartPole)"
    if importlib.util.find_spec("torchrl") is None:
        return [Row("collect", name, "torchrl", float("nan"), None, "frame", "skipped: torchrl is not installed")]

    import gymnax
    import torchrl.collectors as tc
    from torchrl.envs import GymEnv

    frames = 200 if quick else 1000
    env, env_params = gymnax.make("CartPole-v1")
    c = Collector(env, None, frames_per_batch=frames, env_params=env_params)
    ours = jax.jit(c.collect)
    t_ours = interleaved({"ours": ours}, c.init(jax.random.key(0)), None, repeats=3 if quick else 11)["ours"]
    col = tc.Collector(GymEnv("CartPole-v1"), policy=None, frames_per_batch=frames, total_frames=-1)
    try:
        it = iter(col)
        next(it)  # warm-up
        reps = 2 if quick else 5
        t0 = time.perf_counter()
        for _ in range(reps):
            next(it)
        t_ref = (time.perf_counter() - t0) / reps
    finally:
        col.shutdown()
    return [Row("collect", name, "torchrl " + importlib.import_module("torchrl").__version__,
                t_ours / frames * 1e6, t_ref / frames * 1e6, "frame",
                f"ours {frames / t_ours / 1e6:.2f} Mframes/s, TorchRL {frames / t_ref / 1e3:.1f} kframes/s")]


def run(quick: bool = False) -> list[Row]:
    import gymnax

    env, env_params = gymnax.make("CartPole-v1")
    policy_params = mlp_init(jax.random.key(1))
    rows = []
    for num_envs, T in QUICK_CASES if quick else CASES:
        c = Collector(env, mlp_policy, frames_per_batch=num_envs * T, env_params=env_params,
                      num_envs=None if num_envs == 1 else num_envs)
        ours = jax.jit(c.collect)
        ref_init, ref_rollout = _reference(env, env_params, num_envs, T)
        ref = jax.jit(ref_rollout)
        cstate = c.init(jax.random.key(0))
        rstate = ref_init(jax.random.key(0))
        # each function gets its own state as the first argument of one shared call signature
        fns = {"ours": lambda s, p: ours(s[0], p), "ref": lambda s, p: ref(s[1], p)}
        t = interleaved(fns, (cstate, rstate), policy_params, repeats=3 if quick else 21)
        frames = num_envs * T
        rows.append(Row(
            "collect", f"CartPole-v1 MLP {num_envs}x{T} (envs x steps)", "PureJaxRL scan",
            t["ours"] * 1e6, t["ref"] * 1e6, "batch",
            f"ours {frames / t['ours'] / 1e6:.2f} Mframes/s, ref {frames / t['ref'] / 1e6:.2f}",
        ))
    rows.extend(gru_rows(quick))
    rows.extend(_torchrl_rows(quick))
    return rows


if __name__ == "__main__":
    main_for(run, __doc__.splitlines()[0])
