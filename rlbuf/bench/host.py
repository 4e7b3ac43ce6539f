"""Host-env and env-suite collection benchmarks.

- ``HostCollector`` on gymnasium ``CartPole-v1`` (and on an EnvPool pool where envpool is
  installed), 8 envs, the small MLP policy of
  ``bench.collect`` (4-64-64-2, sampled action + log-prob): frames/s against the bare vector env
  stepped with random actions in the same process (the floor; target >= 0.7x of its frames/s,
  i.e. a time ratio <= 1.43) and against TorchRL's ``Collector`` on the same env and policy
  size (target >= 10x its frames/s, i.e. a time ratio <= 0.1).
- Each JAX suite's ``Collector`` (through ``rlbuf.envs.make``) against a hand-written
  ``lax.scan`` rollout of the same env with the suite's own auto-reset (target <= 1.1x).

Run: ``python -m rlbuf.bench.host`` (``--quick`` for a smoke run; ``--suites`` to add the suites).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Callable

import jax
import numpy as np

from rlbuf.bench._timing import Row, print_rows, threaded
from rlbuf.bench.collect import mlp_init, mlp_policy
from rlbuf.collectors import Collector
from rlbuf.collectors.host import HostCollector

NUM_ENVS = 8


def _gym_vec(mode, num=None):
    num = NUM_ENVS if num is None else num
    import gymnasium as gym

    return gym.make_vec("CartPole-v1", num_envs=num, vectorization_mode=mode,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})


def _bare(vec, steps):
    """The floor: the vector env alone, stepped with random actions drawn beforehand (so the
    floor pays for no action sampling at all)."""
    actions = np.random.default_rng(0).integers(0, 2, (steps, vec.num_envs))

    def run():
        for a in actions:
            vec.step(a)
    return run


def _hand_loop(vec, params, steps):
    """The fastest loop a user could write around the same env and jitted policy: per step one
    policy call on the current observations (keys split beforehand), its action read back and
    the env stepped; nothing stored. What ``HostCollector`` adds on top of it is the collector's
    own cost (the policy's device time and dispatch are in both)."""
    policy = jax.jit(mlp_policy)
    keys = list(jax.random.split(jax.random.key(0), steps))
    obs = [vec.reset(seed=0)[0]]

    def run():
        o = obs[0]
        for k in keys:
            a = np.asarray(policy(params, o, k)[0])
            o = vec.step(a)[0]
        obs[0] = o
    return run


def _host(hc, params):
    state = [hc.init(jax.random.key(0))]

    def run():
        state[0], b = hc.collect(state[0], params)
        jax.block_until_ready(b)
    return run


def _torchrl(steps, reps):
    """TorchRL's Collector over 8 serial gymnasium CartPoles with a 4-64-64-2 torch MLP."""
    import torch
    import torchrl.collectors as tc
    from tensordict.nn import TensorDictModule
    from torchrl.envs import GymEnv, SerialEnv
    from torchrl.modules import MLP, OneHotCategorical, ProbabilisticActor

    torch.set_num_threads(1)
    env = SerialEnv(NUM_ENVS, lambda: GymEnv("CartPole-v1"))
    net = TensorDictModule(MLP(in_features=4, out_features=2, num_cells=[64, 64], activation_class=torch.nn.Tanh),
                           in_keys=["observation"], out_keys=["logits"])
    actor = ProbabilisticActor(net, in_keys=["logits"], distribution_class=OneHotCategorical,
                               spec=env.action_spec, return_log_prob=True)
    col = tc.Collector(env, actor, frames_per_batch=NUM_ENVS * steps, total_frames=-1)
    try:
        it = iter(col)
        return _interleaved_fps({"torchrl": lambda: next(it)}, NUM_ENVS * steps, reps)["torchrl"][0]
    finally:
        col.shutdown()


def _interleaved_fps(runs: dict, frames: int, reps: int) -> dict[str, tuple[float, float]]:
    """``(median, best)`` frames/s of each runner, repeats interleaved (the machine's load drifts;
    the best of the repeats is the least load-dependent estimate)."""
    for r in runs.values():
        r()  # warm-up (compiles)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for k, r in runs.items():
            t0 = time.perf_counter()
            r()
            samples[k].append(time.perf_counter() - t0)
    return {k: (frames / sorted(v)[len(v) // 2], frames / min(v)) for k, v in samples.items()}


def host_rows(quick: bool = False) -> list[Row]:
    steps = 64 if quick else 256
    reps = 3 if quick else 9
    params = mlp_init(jax.random.key(0))
    frames = NUM_ENVS * steps
    runs, closers = {}, []
    for mode in ("sync", "async"):
        vec = _gym_vec(mode)
        vec.reset(seed=0)
        runs[f"bare {mode}"] = _bare(vec, steps)
        hc = HostCollector(_gym_vec(mode), mlp_policy, frames_per_batch=frames)
        runs[f"host {mode}"] = _host(hc, params)
        hand = _gym_vec(mode)
        runs[f"hand {mode}"] = _hand_loop(hand, params, steps)
        closers += [vec, hc, hand]
    hc = HostCollector([_gym_vec("async", NUM_ENVS // 2) for _ in range(2)], mlp_policy, frames_per_batch=frames)
    runs["host async 2 groups"] = _host(hc, params)
    closers.append(hc)
    cases = [("sync", "host sync", "bare sync"), ("async", "host async", "bare async"),
             (f"async, 2 groups of {NUM_ENVS // 2} alternating", "host async 2 groups", "bare async")]
    if importlib.util.find_spec("envpool"):  # EnvPool's C++ thread pool (synchronous pool)
        import envpool

        pool = envpool.make_gymnasium("CartPole-v1", num_envs=NUM_ENVS, seed=0)
        pool.reset()
        runs["bare envpool"] = _bare(pool, steps)
        hc = HostCollector(envpool.make_gymnasium("CartPole-v1", num_envs=NUM_ENVS, seed=0), mlp_policy,
                           frames_per_batch=frames)
        runs["host envpool"] = _host(hc, params)
        closers += [pool, hc]
        cases.append(("EnvPool", "host envpool", "bare envpool"))
    try:
        fps = _interleaved_fps(runs, frames, reps)
    finally:
        for c in closers:
            c.close()
    rows = []
    for case, ours, ref in cases:
        (om, ob), (rm, rb) = fps[ours], fps[ref]
        rows.append(Row("host", f"HostCollector CartPole-v1 MLP {NUM_ENVS} envs {case}",
                        f"{ref} vector env, random actions", 1e6 / om, 1e6 / rm, "frame",
                        f"ours {om / 1e3:.1f} kframes/s = {om / rm:.2f}x of the floor (best of repeats "
                        f"{ob / 1e3:.1f} vs {rb / 1e3:.1f} = {ob / rb:.2f}x); target >= 0.7x"))
    for mode in ("sync", "async"):
        (om, ob), (hm, hb) = fps[f"host {mode}"], fps[f"hand {mode}"]
        rows.append(Row("host", f"HostCollector CartPole-v1 MLP {NUM_ENVS} envs {mode}",
                        "hand-written loop: jitted policy call + env step per step, nothing stored",
                        1e6 / om, 1e6 / hm, "frame",
                        f"best of repeats {ob / 1e3:.1f} vs {hb / 1e3:.1f} kframes/s ({hb / ob:.2f}x); "
                        f"the loop itself is {hm / fps[f'bare {mode}'][0]:.2f}x of the bare env's frames/s"))
    if importlib.util.find_spec("torchrl") is None:
        rows.append(Row("host", "TorchRL Collector", "torchrl", float("nan"), None, "frame",
                        "skipped: torchrl is not installed"))
        return rows
    t_fps = _torchrl(steps, max(2, reps // 2))
    best_key = max(("host sync", "host async", "host async 2 groups"), key=lambda k: fps[k][0])
    best = fps[best_key][0]
    rows.append(Row("host", f"HostCollector CartPole-v1 MLP {NUM_ENVS} envs ({best_key[5:]})",
                    f"TorchRL Collector, SerialEnv of {NUM_ENVS} GymEnv, torch MLP", 1e6 / best, 1e6 / t_fps, "frame",
                    f"ours {best / 1e3:.1f} kframes/s, TorchRL {t_fps / 1e3:.2f} = {best / t_fps:.1f}x; "
                    "target >= 10x"))
    return rows


# ---------------------------------------------------------------------------- JAX suites
def _scan_reference(reset, step, sample, num_envs, T):
    """Hand-written rollout: vmapped reset/step with the suite's own auto-reset, random actions,
    storing observation, action, reward, done and next observation, time-major."""

    def init(key):
        return reset(jax.random.split(key, num_envs)), key

    def rollout(carry):
        def body(c, _):
            st, obs, key = c
            key, ka, ks = jax.random.split(key, 3)
            action = jax.vmap(sample)(jax.random.split(ka, num_envs))
            st2, obs2, nobs, rew, done = step(jax.random.split(ks, num_envs), st, action)
            return (st2, obs2, key), (obs, action, nobs, rew, done)
        return jax.lax.scan(body, carry, None, length=T)
    return init, rollout


def _suite_cases():
    """(name, make spec/kwargs, reference builder) of each installed suite."""
    cases = []
    if importlib.util.find_spec("brax"):
        def brax_ref(env):
            from brax import envs
            b = envs.create("inverted_pendulum", backend="positional", episode_length=1000)
            space = env.action_space()

            def reset(keys):
                s = jax.vmap(b.reset)(keys)
                return s, s.obs

            def step(keys, s, a):
                s2 = jax.vmap(b.step)(s, a)  # AutoResetWrapper: obs is the reset one at done
                return s2, s2.obs, s2.obs, s2.reward, s2.done
            return reset, step, space.sample
        cases.append(("brax inverted_pendulum (positional)", "brax:inverted_pendulum",
                      dict(backend="positional"), brax_ref))
    if importlib.util.find_spec("jumanji"):
        def jumanji_ref(env):
            import jumanji
            from jumanji.wrappers import AutoResetWrapper
            j = AutoResetWrapper(jumanji.make("Snake-v1", num_rows=6, num_cols=6))

            def reset(keys):
                s, ts = jax.vmap(j.reset)(keys)
                return s, ts.observation

            def step(keys, s, a):
                s2, ts = jax.vmap(j.step)(s, a)
                return s2, ts.observation, ts.observation, ts.reward, ts.last()
            return reset, step, env.action_space().sample
        cases.append(("jumanji Snake-v1 6x6", "jumanji:Snake-v1", dict(num_rows=6, num_cols=6), jumanji_ref))
    if importlib.util.find_spec("navix"):
        def navix_ref(env):
            import navix
            n = navix.make("Navix-Empty-8x8-v0")

            def reset(keys):
                ts = jax.vmap(n.reset)(keys)
                return ts, ts.observation

            def step(keys, ts, a):
                ts2 = jax.vmap(n.step)(ts, a)  # Navix's own lazy auto-reset
                return ts2, ts2.observation, ts2.observation, ts2.reward, ts2.is_done()
            return reset, step, env.action_space().sample
        cases.append(("navix Empty-8x8", "navix:Navix-Empty-8x8-v0", {}, navix_ref))
    if importlib.util.find_spec("craftax"):
        def craftax_ref(env):
            from craftax.craftax_env import make_craftax_env_from_name
            cr = make_craftax_env_from_name("Craftax-Symbolic-v1", auto_reset=True)
            p = cr.default_params

            def reset(keys):
                obs, s = jax.vmap(cr.reset, (0, None))(keys, p)
                return s, obs

            def step(keys, s, a):  # Craftax's own auto-reset: a fresh world under a select each step
                obs, s2, r, done, _ = jax.vmap(cr.step, (0, 0, 0, None))(keys, s, a, p)
                return s2, obs, obs, r, done
            return reset, step, env.action_space().sample
        cases.append(("craftax Craftax-Symbolic-v1", "craftax:Craftax-Symbolic-v1", {}, craftax_ref))
    return cases


# world generation makes every Craftax step with a reset costly: small batches, as in the issue
_SIZES = {"craftax": ((4, 16), (8, 64))}


def _adapter_reference(env, params):
    """A hand-written rollout over the adapter's own gymnax-1.0 ``step`` (auto-reset, final
    observation in ``info``): what the collector adds on top of the env protocol."""

    def reset(keys):
        obs, st = jax.vmap(env.reset, (0, None))(keys, params)
        return st, obs

    def step(keys, st, a):
        obs, st2, r, term, trunc, info = jax.vmap(env.step, (0, 0, 0, None))(keys, st, a, params)
        return st2, obs, info["final_observation"], r, term | trunc
    return reset, step, env.action_space(params).sample


def suite_rows(quick: bool = False, only: str | None = None) -> list[Row]:
    from rlbuf.envs import make

    rows = []
    for name, spec, kw, ref in _suite_cases():
        if only and not any(o in name for o in only.split(",")):
            continue
        B, T = _SIZES.get(spec.split(":")[0], ((8, 32), (64, 128)))[0 if quick else 1]
        env, params = make(spec, **kw)
        c = Collector(env, None, frames_per_batch=B * T, num_envs=B, env_params=params)
        ours = jax.jit(c.collect)
        # each function carries its own state from call to call (the batch is computed and dropped)
        fns: dict[str, Callable] = {"ours": lambda st: ours(st, None)[0]}
        states: dict[str, Any] = {"ours": c.init(jax.random.key(0))}
        refs = [("hand lax.scan, suite's own auto-reset wrapper", ref(env))]
        if not spec.startswith("craftax"):  # (Craftax: each compile of world generation takes minutes)
            refs.append(("hand lax.scan of the adapter's gymnax step", _adapter_reference(env, params)))
        for label, (reset, step, sample) in refs:
            r_init, r_roll = _scan_reference(reset, step, sample, B, T)
            (st, obs), _ = jax.jit(r_init)(jax.random.key(0))
            fn = jax.jit(r_roll)
            fns[label] = lambda arg, fn=fn: fn(arg)[0]
            states[label] = (st, obs, jax.random.key(1))
        # process CPU time, repeats interleaved: on the shared 2-core VM wall times vary by 2-4x
        t = threaded(fns, states, repeats=3 if quick else 15, clock=time.process_time)
        (med_o, min_o) = t["ours"]
        for label, _ in refs:
            med_r, min_r = t[label]
            rows.append(Row("suites", f"Collector {name}, {B}x{T} random", label, med_o * 1e6, med_r * 1e6,
                            "batch", f"min-of-repeats {min_o * 1e3:.2f} vs {min_r * 1e3:.2f} ms "
                            f"({min_o / min_r:.2f}×); ours {B * T / med_o / 1e6:.3f} Mframes/s; target <= 1.1x"))
    return rows


def run(quick: bool = False, suites: bool = False) -> list[Row]:
    return host_rows(quick) + (suite_rows(quick) if suites else [])


def main(argv=None) -> None:
    import argparse

    global NUM_ENVS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--suites", action="store_true", help="also the JAX suites (minutes of compilation)")
    p.add_argument("--only-suites", action="store_true")
    p.add_argument("--num-envs", type=int, default=NUM_ENVS, help="envs of the host rows (default 8)")
    p.add_argument("--only", default=None, help="only the suites whose name contains one of these (comma-separated)")
    a = p.parse_args(argv)
    NUM_ENVS = a.num_envs
    print_rows(suite_rows(a.quick, a.only) if a.only_suites else run(a.quick, a.suites))


if __name__ == "__main__":
    main()
