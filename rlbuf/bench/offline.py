"""Offline data benchmark: ``python -m rlbuf.bench.offline [--quick] [--size N]``.

1. **Loading a Minari dataset.** A local HDF5 dataset of ``N`` transitions (default 1M;
   ``--quick`` 100k) is generated at bench time in a temporary ``MINARI_DATASETS_PATH`` (with
   ``minari.create_dataset_from_buffers``: CartPole-shaped synthetic episodes of 50-350 steps,
   obs float32[4], Discrete(2) actions; ``DataCollector`` would take minutes for 1M steps on a
   shared machine), then deleted. Rows, in µs per transition:
   - ``from_minari`` (the whole ``[N]`` batch in host memory) against Minari's own episode
     iteration (``for ep in dataset.iterate_episodes()``, which only reads);
   - ``fill_buffer`` (chunks of 65,536 transitions added to a ``LazyTensorStorage(N)`` buffer
     with a jitted donated ``add``; compile time included, once) against the same reference.
2. **Ensemble sampling.** ``ReplayBufferEnsemble(a, b, num_per_buffer=(128, 128))`` of an
   ``ndim=1`` and an ``ndim=2`` (4 lanes) buffer of 100k transitions each, against the sum of
   the members sampled alone: per sample, inside a jitted ``lax.scan`` of 100 samples that
   folds every batch into a checksum (so no gather is optimised away). Uniform and slice
   (16 slices x 8 steps per member) samplers. Target: ratio <= 1.1.

Timing: medians of interleaved repeats (load drift hits both sides alike); compile time never
counts in (2).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.bench._timing import Row, print_rows
from rlbuf.buffers.ensemble import ReplayBufferEnsemble
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

TRAJ = ("collector", "traj_ids")


# --------------------------------------------------------------------------- (1) loading


def make_dataset(dataset_id: str, n: int, seed: int = 0):
    """A synthetic CartPole-shaped Minari dataset of exactly ``n`` transitions."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(50, 351)))
    lengths[-1] -= sum(lengths) - n
    if lengths[-1] <= 0:
        lengths.pop()
    eps = []
    for i, t in enumerate(lengths):
        eps.append(EpisodeBuffer(
            observations=rng.standard_normal((t + 1, 4)).astype(np.float32),
            actions=rng.integers(0, 2, t),
            rewards=np.ones(t),
            terminations=np.arange(t) == t - 1 if i % 2 else np.zeros(t, bool),
            truncations=np.zeros(t, bool) if i % 2 else np.arange(t) == t - 1,
        ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(
            dataset_id, eps, observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            action_space=gym.spaces.Discrete(2), algorithm_name="synthetic")


def loading_rows(n: int, repeats: int) -> list[Row]:
    from rlbuf import datasets

    old = os.environ.get("MINARI_DATASETS_PATH")
    with tempfile.TemporaryDirectory(prefix="rlbuf-bench-minari-") as root:
        os.environ["MINARI_DATASETS_PATH"] = root
        try:
            t0 = time.perf_counter()
            ds = make_dataset("bench/synthetic-v0", n)
            gen = time.perf_counter() - t0
            rb = ReplayBuffer(storage=LazyTensorStorage(n), batch_size=256)

            def minari_iter():
                for ep in ds.iterate_episodes():
                    ep.observations  # noqa: B018 - the episode is read; nothing else to do

            fns = {
                "minari": minari_iter,
                "from_minari": lambda: datasets.from_minari(ds),
                "fill_buffer": lambda: jax.block_until_ready(datasets.fill_buffer(rb, ds).storage),
            }
            samples: dict = {k: [] for k in fns}
            for _ in range(repeats):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    samples[k].append(time.perf_counter() - t0)
        finally:
            if old is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old
    med = {k: sorted(v)[len(v) // 2] * 1e6 / n for k, v in samples.items()}
    note = f"{n:,} transitions, {ds.total_episodes:,} episodes (generated in {gen:.0f} s)"
    ref = "minari iterate_episodes"
    return [
        Row("offline", f"from_minari {n // 1000}k", ref, med["from_minari"], med["minari"], "transition",
            f"{1 / med['from_minari']:.2f} M transitions/s; {note}"),
        Row("offline", f"fill_buffer {n // 1000}k", ref, med["fill_buffer"], med["minari"], "transition",
            f"{1 / med['fill_buffer']:.2f} M transitions/s, into a jitted donated buffer"),
    ]


# --------------------------------------------------------------------------- (2) ensemble


def _data(key, shape):
    k1, k2 = jax.random.split(key)
    t = shape[-1]
    ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) // 100, shape)
    if len(shape) == 2:
        ids = ids + 10_000 * jnp.arange(shape[0], dtype=jnp.int32)[:, None]
    return {"observation": jax.random.normal(k1, (*shape, 4)), "action": jax.random.randint(k2, shape, 0, 2),
            "collector": {"traj_ids": ids}}


def ensemble_rows(repeats: int, iters: int = 100) -> list[Row]:
    size, half = 100_000, 128
    rows = []
    for name, make_sampler in (("uniform", lambda: None), ("slice 16x8", lambda: SliceSampler(slice_len=8,
                                                                                           traj_key=TRAJ))):
        kw: dict[str, Any] = {} if make_sampler() is None else {"sampler": make_sampler()}
        a = ReplayBuffer(storage=LazyTensorStorage(size), batch_size=half, **kw)
        b = ReplayBuffer(storage=LazyTensorStorage(size, ndim=2), batch_size=half, **kw)
        ens = ReplayBufferEnsemble(a, b, num_per_buffer=(half, half))
        da, db = _data(jax.random.key(0), (size,)), _data(jax.random.key(1), (4, size // 4))
        sa = jax.jit(a.add, donate_argnums=0)(a.init(da), da)
        sb = jax.jit(b.add, donate_argnums=0)(b.init(db), db)
        states = {"ensemble": ens.from_states(sa, sb), "a": jax.tree.map(jnp.copy, sa),
                  "b": jax.tree.map(jnp.copy, sb)}

        def looped(sample):
            def run(carry):
                def body(c, k):
                    s, acc = c
                    s, batch, _ = sample(s, k)
                    return (s, acc + batch["observation"].sum()), None

                (s, acc), _ = jax.lax.scan(body, carry, jax.random.split(jax.random.key(0), iters))
                return s, acc

            return jax.jit(run, donate_argnums=0)

        fns = {"ensemble": looped(ens.sample), "a": looped(a.sample), "b": looped(b.sample)}
        carries = {k: (states[k], jnp.float32(0)) for k in fns}
        samples: dict = {k: [] for k in fns}
        for k, f in fns.items():
            carries[k] = jax.block_until_ready(f(carries[k]))
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                carries[k] = jax.block_until_ready(f(carries[k]))
                samples[k].append((time.perf_counter() - t0) / iters * 1e6)
        med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
        rows.append(Row("offline", f"ensemble sample {name} 128+128", "sum of members alone", med["ensemble"],
                        med["a"] + med["b"], "sample",
                        f"members alone: {med['a']:.1f} + {med['b']:.1f} µs; target <= 1.1"))
    return rows


def run(quick: bool = False, size: int | None = None) -> list[Row]:
    n = size or (100_000 if quick else 1_000_000)
    rows = ensemble_rows(repeats=7 if quick else 31)
    try:
        import minari  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        print(f"# skipped Minari loading rows: {e}")
        return rows
    return loading_rows(n, repeats=3) + rows


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100k transitions, fewer repeats")
    p.add_argument("--size", type=int, default=None, help="transitions of the generated dataset")
    args = p.parse_args(argv)
    print_rows(run(quick=args.quick, size=args.size), digits=2)


if __name__ == "__main__":
    main()
