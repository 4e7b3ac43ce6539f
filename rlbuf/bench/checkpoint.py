"""Checkpoint cost (process CPU time, see ``_median``): ``rlbuf.checkpoint.save``/``restore`` of
a ~256 MB buffer state (per-leaf checksums, tree description and checks included) against the
same calls with checksums off, and against plain orbax saving/restoring the same arrays (a
``CheckpointManager`` with ``StandardSave``/``StandardRestore``, nothing else; restored into host
numpy, and once more followed by the same move to the device as rlbuf's restore of a state
without placement).

``python -m rlbuf.bench.checkpoint [--quick]`` (quick: ~64 MB). Needs orbax-checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp  # the reference; a missing orbax skips this module in python -m rlbuf.bench

from rlbuf import _checkpoint_desc as cd
from rlbuf import checkpoint
from rlbuf.bench._timing import Row, print_rows
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.random import RandomSampler
from rlbuf.storages import LazyTensorStorage


def _state(mb: int):
    lanes, feat = 4, 256
    steps = mb * 2**20 // (lanes * feat * 4)
    rb = ReplayBuffer(storage=LazyTensorStorage(lanes * steps, ndim=2), sampler=RandomSampler(), batch_size=32)
    key = jax.random.key(0)
    data = {"observation": jax.random.normal(key, (lanes, steps, feat)),  # incompressible
            "action": jax.random.randint(key, (lanes, steps), 0, 8)}
    return rb.add(rb.init(data), data)


def _plain(directory, step, arrays, restore_like=None):
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False)) as mgr:
        if restore_like is None:
            mgr.save(step, args=ocp.args.StandardSave(arrays))
            mgr.wait_until_finished()
            return None
        return mgr.restore(mgr.latest_step(), args=ocp.args.StandardRestore(restore_like))


@contextlib.contextmanager
def _checksums_off():
    """rlbuf's save/restore with the checksum computation and verification replaced by no-ops."""
    saved = checkpoint.cd.checksums, checkpoint._verify
    checkpoint.cd.checksums = lambda arrays: [0] * len(arrays)
    checkpoint._verify = lambda *a, **k: None
    try:
        yield
    finally:
        checkpoint.cd.checksums, checkpoint._verify = saved


@jax.jit
def _bare_sum(x):
    w = jax.lax.bitcast_convert_type(x, jnp.uint32) if x.dtype.itemsize == 4 else x.astype(jnp.uint32)
    return jnp.sum(w, dtype=jnp.uint32)


def _median(fn, repeats):
    """Median *process CPU time* (all threads: orbax's writers, XLA's) of ``fn()``: on a shared,
    overloaded VM wall times of one call vary several-fold; the work done does not."""
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        out.append(time.process_time() - t0)
    return float(np.median(out))


def run(quick: bool = False) -> list:
    mb = 64 if quick else 256
    repeats = 2 if quick else 5
    state = _state(mb)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:06d}": x for i, x in enumerate(leaves)}
    like = {k: np.empty(x.shape, x.dtype) for k, x in arrays.items()}
    root = tempfile.mkdtemp(prefix="rlbuf-bench-ckpt-")
    try:
        ours_dir, ref_dir = f"{root}/ours", f"{root}/ref"
        step = iter(range(10_000))
        checkpoint.save(ours_dir, state)  # warm-up (compiles the checksum functions)
        jax.block_until_ready([_bare_sum(x) for x in leaves])
        _plain(ref_dir, next(step), arrays)
        save_ours, save_ref, rest_ours, rest_ref, sums, bare, rest_dev = [], [], [], [], [], [], []
        save_off, rest_off = [], []
        for _ in range(repeats):  # interleaved
            with _checksums_off():
                save_off.append(_median(lambda: checkpoint.save(ours_dir, state), 1))
                rest_off.append(_median(lambda: checkpoint.restore(ours_dir, state), 1))
            save_ours.append(_median(lambda: checkpoint.save(ours_dir, state), 1))
            save_ref.append(_median(lambda: _plain(ref_dir, next(step), arrays), 1))
            rest_ours.append(_median(lambda: checkpoint.restore(ours_dir, state), 1))
            rest_ref.append(_median(lambda: _plain(ref_dir, 0, arrays, like), 1))
            # the same restore placing the arrays on the device, as rlbuf's restore returns them
            rest_dev.append(_median(lambda: [jnp.asarray(x) for x in _plain(ref_dir, 0, arrays, like).values()], 1))
            sums.append(_median(lambda: cd.checksums(leaves), 1))
            bare.append(_median(lambda: [_bare_sum(x) for x in leaves], 1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = lambda xs: float(np.median(xs)) * 1e6  # noqa: E731
    note = f"{mb} MB state; checksums alone {med(sums) / 1e3:,.0f} ms ({mb / (np.median(sums)):,.0f} MB/s)"
    return [
        Row("checkpoint", f"checksums of a {mb} MB state", "bare uint32 sum of the same words", med(sums), med(bare),
            "state", "one pass over the data on its device"),
        Row("checkpoint", f"save {mb} MB buffer state", "same save, checksums off", med(save_ours), med(save_off),
            "save", "the checksums' own cost"),
        Row("checkpoint", f"restore {mb} MB buffer state", "same restore, checksums off", med(rest_ours),
            med(rest_off), "restore", "the checksums' own cost"),
        Row("checkpoint", f"save {mb} MB buffer state (checksums + description)", "plain orbax StandardSave",
            med(save_ours), med(save_ref), "save", note),
        Row("checkpoint", f"restore {mb} MB buffer state (checks + checksum verification)",
            "plain orbax StandardRestore", med(rest_ours), med(rest_ref), "restore", note),
        Row("checkpoint", f"restore {mb} MB buffer state (checks + checksum verification)",
            "plain orbax StandardRestore + jnp.asarray (same device placement)", med(rest_ours), med(rest_dev),
            "restore", "target <= 1.3: the checksum pass is one read of the data"),
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print_rows(run(quick=p.parse_args().quick))
