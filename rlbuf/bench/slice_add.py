"""Cost of slice bookkeeping at ``add`` time: ``python -m rlbuf.bench.slice_add [--quick]``.

``add`` of a ``[4, 1000]`` batch (obs float32[8], action int32, reward float32, done bool) into a
100k ``LazyTensorStorage(ndim=2)`` with the state donated, inside a jitted scan of 10 adds, for
``SliceSampler(slice_len=10, end_key=("done",))`` (boundary records + long-trajectory queue),
the same with ``strict_length=False`` (boundary records only) and ``RandomSampler`` (no
bookkeeping), each against flashbax's trajectory buffer add in the same process, repeats
interleaved. Times are process CPU time (``time.process_time``: all of XLA's threads, less
sensitive to other processes on a shared machine than wall time); the note adds the wall-time
ratio of a second interleaved run (on a quiet machine the better measure: CPU time also counts
XLA:CPU splitting a kernel over its threads). Targets: slice <= 1.8x flashbax (issue 30),
random <= 1.0x. Skipped if flashbax is not importable.
"""

from __future__ import annotations

import time

import jax

from rlbuf.bench._timing import Row, main_for, threaded
from rlbuf.bench.buffer import transitions
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.slice import SliceSampler
from rlbuf.storages import LazyTensorStorage

SIZE, LANES, T_LEN, N_SCAN = 100_000, 4, 1000, 10


def run(quick: bool = False) -> list[Row]:
    case = f"add [{LANES}, {T_LEN}] into {SIZE // 1000}k ndim=2, donated, in scan of {N_SCAN}"
    try:
        import flashbax as fbx
    except ImportError as e:  # pragma: no cover - depends on the environment
        return [Row("slice_add", case, "flashbax trajectory buffer add", float("nan"), None, "add",
                    f"skipped: flashbax not importable ({e})")]
    batch = transitions(jax.random.key(3), (LANES, T_LEN))
    stacked = transitions(jax.random.key(4), (N_SCAN, LANES, T_LEN))

    def rb(**kw):
        return ReplayBuffer(storage=LazyTensorStorage(SIZE, ndim=2), batch_size=320, **kw)

    bufs = {
        "random": rb(),
        "slice": rb(sampler=SliceSampler(slice_len=10, end_key=("done",))),
        "slice, strict_length=False": rb(sampler=SliceSampler(slice_len=10, strict_length=False, end_key=("done",))),
    }
    fb = fbx.make_trajectory_buffer(add_batch_size=LANES, sample_batch_size=32, sample_sequence_length=1, period=1,
                                    min_length_time_axis=1, max_length_time_axis=SIZE // LANES)
    states = {k: b.init(batch) for k, b in bufs.items()}
    states["fbx"] = fb.init(jax.tree_util.tree_map(lambda x: x[0, 0], batch))
    adds = {k: b.add for k, b in bufs.items()}
    adds["fbx"] = fb.add
    fns = {
        k: jax.jit(lambda s, xs, f=f: jax.lax.scan(lambda s, x: (f(s, x), None), s, xs)[0], donate_argnums=0)
        for k, f in adds.items()
    }
    t = threaded(fns, states, stacked, repeats=5 if quick else 21, clock=time.process_time)
    wall = threaded(fns, states, stacked, repeats=5 if quick else 21)
    ref, ref_min = t["fbx"]
    rows = []
    for k in bufs:
        med, mn = t[k]
        target = "1.0" if k == "random" else "1.8"
        rows.append(Row("slice_add", f"{case}, {k}", "flashbax trajectory buffer add", med / N_SCAN * 1e6,
                        ref / N_SCAN * 1e6, "add",
                        f"target <= {target}; CPU time; min-of-repeats {mn / ref_min:.2f}×; "
                        f"wall time {wall[k][0] / wall['fbx'][0]:.2f}× (min {wall[k][1] / wall['fbx'][1]:.2f}×)"))
    return rows


if __name__ == "__main__":
    main_for(run, "rlbuf slice bookkeeping add benchmark")
