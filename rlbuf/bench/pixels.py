"""Pixel-buffer benchmark: ``python -m rlbuf.bench.pixels [--quick]``.

``[84, 84]`` uint8 frames in 8 lanes (episodes of random length, mean 30), full buffer.
rlbuf: ``LazyTensorStorage(C, ndim=2, compact_next=True)`` + ``FrameStack(4)``: each frame
stored once, the stacks (``[84, 84, 4]`` observation and next observation) built at sample
time. Reference, in the same process: an uncompressed ``LazyTensorStorage(C, ndim=2)`` that
holds the pre-stacked ``[84, 84, 4]`` observation and next observation (the layout of
flashbax, Brax and a naive rlbuf), sampled with the same sampler and key. Both store the
collector's ``("collector", "traj_ids")`` (which ``FrameStack`` reads for trajectory starts). Rows: uniform
sample of 32 items, slice sample of 4 x 8 steps (``SliceSampler``), in process CPU time.
Target: <= 1.3x.

Also printed: the state's bytes of 1M transitions in each layout (computed with
``jax.eval_shape``, nothing allocated).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.bench._timing import Row, main_for, threaded
from rlbuf.buffers.frame_stack import FrameStack
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers import RandomSampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage, compact

LANES, K, FRAME, MEAN_EP = 8, 4, (84, 84), 30
END = ("next", "done")


def episodes(n_lanes: int, t: int, seed: int = 0) -> tuple[dict, dict]:
    """(single-frame batch, pre-stacked batch), leaves ``[n_lanes, t, ...]``."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_lanes, t + 1, *FRAME), dtype=np.uint8)
    final = rng.integers(0, 256, (n_lanes, t, *FRAME), dtype=np.uint8)
    done = rng.random((n_lanes, t)) < 1.0 / MEAN_EP
    nxt = np.where(done[..., None, None], final, frames[:, 1:])
    obs = frames[:, :t]
    # Pre-stacked reference: walk back within the episode (first frame repeated).
    start = np.zeros((n_lanes, t), np.int64)
    for i in range(1, t):
        start[:, i] = np.where(done[:, i - 1], i, start[:, i - 1])
    steps = np.arange(t)
    src = [np.maximum(steps[None] - j, start) for j in range(K - 1, -1, -1)]  # oldest first
    lane = np.arange(n_lanes)[:, None]
    st_obs = np.stack([obs[lane, s] for s in src], axis=-1)
    st_next = np.concatenate([st_obs[..., 1:], nxt[..., None]], axis=-1)
    # Trajectory ids as a collector stores them (FrameStack reads them for trajectory starts).
    ids = np.arange(n_lanes)[:, None] + n_lanes * np.concatenate(
        [np.zeros((n_lanes, 1), np.int64), np.cumsum(done[:, :-1], axis=1)], axis=1)
    common = {"action": rng.integers(0, 6, (n_lanes, t)).astype(np.int32),
              "reward": rng.random((n_lanes, t)).astype(np.float32),
              "collector": {"traj_ids": ids.astype(np.int32)}}
    single = dict(common, observation=obs, next={"observation": nxt, "done": done})
    stacked = dict(common, observation=st_obs, next={"observation": st_next, "done": done})
    return single, stacked


def memory_rows(size: int = 1_000_000, lanes: int = 16) -> list[tuple[str, float]]:
    """GB of the state's storage for ``size`` transitions in each layout (nothing allocated)."""
    def ex(frame_shape):
        s = lambda shape, dt: jax.ShapeDtypeStruct((lanes, 1, *shape), dt)  # noqa: E731
        return {"observation": s(frame_shape, jnp.uint8), "action": s((), jnp.int32),
                "reward": s((), jnp.float32), "next": {"observation": s(frame_shape, jnp.uint8),
                                                        "done": s((), jnp.bool_)}}
    gb = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)) / 1e9  # noqa: E731
    ours = jax.eval_shape(ReplayBuffer(storage=LazyTensorStorage(size, ndim=2, compact_next=True),
                                       batch_size=32).init, ex(FRAME))
    naive = jax.eval_shape(ReplayBuffer(storage=LazyTensorStorage(size, ndim=2), batch_size=32).init,
                           ex((*FRAME, K)))
    frame = size * FRAME[0] * FRAME[1] / 1e9
    return [
        ("one [84, 84] frame per transition", frame),
        ("rlbuf compact_next + FrameStack(4) (incl. final-obs table)", gb(ours.storage)),
        ("  of which the final-observation table", lanes * (compact.table_rows(LazyTensorStorage(
            size, ndim=2, compact_next=True), ours.layout) + 1) * FRAME[0] * FRAME[1] / 1e9),
        ("flashbax flat buffer (each step once, stacked [84, 84, 4])", frame * K),
        ("naive (observation and next observation stacked)", gb(naive.storage)),
    ]


def run(quick: bool = False) -> list[Row]:
    cap = 2048 if quick else 8192
    single, stacked = episodes(LANES, cap // LANES)
    rows = []
    for name, mk in (("uniform 32", lambda: RandomSampler()),
                     ("slices 4x8", lambda: SliceSampler(num_slices=4, end_key=END))):
        ours = ReplayBuffer(storage=LazyTensorStorage(cap, ndim=2, compact_next=True), sampler=mk(),
                            batch_size=32, frame_stack=FrameStack(K))
        ref = ReplayBuffer(storage=LazyTensorStorage(cap, ndim=2), sampler=mk(), batch_size=32)
        so = jax.jit(ours.add, donate_argnums=0)(ours.init(single), single)
        sr = jax.jit(ref.add, donate_argnums=0)(ref.init(stacked), stacked)

        def step(rb):
            @functools.partial(jax.jit, donate_argnums=0)
            def f(state, key):
                state, batch, _ = rb.sample(state, key)
                # Every leaf summed: the same output bytes on both sides, no batch returned.
                return state, jax.tree_util.tree_reduce(lambda a, x: a + jnp.sum(x, dtype=jnp.int32),
                                                        batch, jnp.int32(0))
            return lambda s, key: f(s[0], key)

        states = {"ours": (so, 0), "ref": (sr, 0)}
        # Process CPU time: wall times of one call vary 3x on the shared, loaded 2-core VM.
        times = threaded({"ours": step(ours), "ref": step(ref)}, states, jax.random.key(0),
                         repeats=5 if quick else 41, clock=time.process_time)
        (to, mo), (tr, mr) = times["ours"], times["ref"]
        rows.append(Row("pixels", f"{name}, C={cap}", "pre-stacked uncompressed", to * 1e6, tr * 1e6, "sample",
                        f"min ratio {mo / mr:.2f}×"))
    return rows


def main(argv=None) -> None:
    for what, gb in memory_rows():
        print(f"| {what} | {gb:.2f} GB |")
    main_for(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
