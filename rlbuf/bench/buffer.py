"""Replay-buffer core benchmark: ``python -m rlbuf.bench.buffer [--quick]``.

1. Uniform sampling of 256 items from a full 100k-transition buffer (``ndim=1`` and ``ndim=2``
   with 4 lanes) inside a jitted ``lax.scan``. Every iteration adds a small batch and then
   samples, so the buffer state changes each iteration and XLA cannot hoist the sampling out
   of the loop. The reference floor runs the same loop with the same ``rb.add`` followed by a
   bare ``jax.random.randint`` + ``jnp.take`` gather. Target ratio <= 1.1.
2. ``add`` of a ``[4, 1000]`` batch (obs float32[8], action int32, reward float32, done bool)
   into a 100k ``ndim=2`` buffer with the state donated, against flashbax's trajectory buffer
   (``add_batch_size=4``, ``max_length_time_axis=25000``), also donated: per add inside a
   jitted scan of adds, and per jitted donated call. Target <= 1.0. Skipped if flashbax is not
   installed.

Both sides of every row thread their own donated state through repeated calls (a donated
input cannot be reused), with their repeats interleaved in one process so load drift hits
both alike. Times are medians; compile time never counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlbuf.bench._timing import Row, main_for, medians, threaded
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.storages import LazyTensorStorage

SIZE = 100_000
LANES = 4
SAMPLE = 256


def transitions(key, shape) -> dict:
    """A batch with leaves ``[*shape, ...]``: obs float32[8], action int32, reward float32, done bool."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "obs": jax.random.normal(k1, (*shape, 8), jnp.float32),
        "action": jax.random.randint(k2, shape, 0, 4, jnp.int32),
        "reward": jax.random.normal(k3, shape, jnp.float32),
        "done": jnp.zeros(shape, jnp.bool_),
    }


def _full_buffer(ndim: int):
    rb = ReplayBuffer(storage=LazyTensorStorage(SIZE, ndim=ndim), batch_size=SAMPLE)
    shape = (SIZE,) if ndim == 1 else (LANES, SIZE // LANES)
    data = transitions(jax.random.key(0), shape)
    state = jax.jit(rb.add, donate_argnums=0)(rb.init(data), data)
    return rb, state


def sample_rows(quick: bool) -> list[Row]:
    iters = 50 if quick else 200
    repeats = 5 if quick else 31
    rows = []
    for ndim in (1, 2):
        rb, state = _full_buffer(ndim)
        add_shape = (4,) if ndim == 1 else (LANES, 1)
        adds = transitions(jax.random.key(1), (iters, *add_shape))
        lay = state.layout

        def bare_sample(state, key):
            # The floor: one integer draw over the stored items and one gather per leaf.
            n = state.count * lay.n_lanes
            u = jax.random.randint(key, (SAMPLE,), 0, n, dtype=jnp.int32)
            if lay.lanes:  # lane-major item -> flat slot, with the cheapest exact index math
                lane = jax.lax.div(u, state.count)
                u = lane * lay.capacity + (u - lane * state.count)
            return jax.tree_util.tree_map(lambda x: jnp.take(x.reshape(lay.size, *x.shape[ndim:]), u, axis=0),
                                          state.storage)

        def rlbuf_sample(state, key):
            state, batch, _ = rb.sample(state, key)
            return state, batch

        def loop(sample_fn):
            def body(carry, xs):
                state, key, acc = carry
                key, sub = jax.random.split(key)
                state = rb.add(state, xs)
                out = sample_fn(state, sub)
                state, batch = out if isinstance(out, tuple) else (state, out)
                acc = acc + sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(batch))
                return (state, key, acc), None

            def run(carry, adds):
                return jax.lax.scan(body, carry, adds)[0]

            return jax.jit(run, donate_argnums=0)

        fns = {"rlbuf": loop(rlbuf_sample), "ref": loop(bare_sample)}
        copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)  # noqa: E731
        carries = {k: (copy(state), jax.random.key(2), jnp.zeros((), jnp.float32)) for k in fns}
        del state
        t = medians(threaded(fns, carries, adds, repeats=repeats))
        lane_txt = "" if ndim == 1 else f" ({LANES} lanes)"
        rows.append(Row(
            "buffer", f"add {'x'.join(map(str, add_shape))} + uniform sample {SAMPLE} from {SIZE // 1000}k, "
            f"ndim={ndim}{lane_txt}, in scan",
            "same add + randint/take", t["rlbuf"] / iters * 1e6, t["ref"] / iters * 1e6, "iter",
            "target ratio <= 1.1",
        ))
    return rows


def add_rows(quick: bool) -> list[Row]:
    t_len, n_scan = 1000, 10
    repeats = 5 if quick else 31
    rb = ReplayBuffer(storage=LazyTensorStorage(SIZE, ndim=2), batch_size=SAMPLE)
    batch = transitions(jax.random.key(3), (LANES, t_len))
    stacked = transitions(jax.random.key(4), (n_scan, LANES, t_len))
    try:
        import flashbax as fbx
    except ImportError as e:
        return [Row("buffer", f"add [{LANES}, {t_len}] into {SIZE // 1000}k ndim=2", "flashbax trajectory buffer",
                    float("nan"), None, "add", f"skipped: flashbax not importable ({e})")]
    fb = fbx.make_trajectory_buffer(
        add_batch_size=LANES, sample_batch_size=SAMPLE, sample_sequence_length=1, period=1,
        min_length_time_axis=1, max_length_time_axis=SIZE // LANES,
    )
    one = jax.tree_util.tree_map(lambda x: x[0, 0], batch)
    states = {"rlbuf": rb.init(batch), "ref": fb.init(one)}
    add_fns = {"rlbuf": rb.add, "ref": fb.add}
    scan_fns = {
        k: jax.jit(lambda s, xs, f=f: jax.lax.scan(lambda s, x: (f(s, x), None), s, xs)[0], donate_argnums=0)
        for k, f in add_fns.items()
    }
    t_scan = medians(threaded(scan_fns, states, stacked, repeats=repeats))
    call_fns = {k: jax.jit(f, donate_argnums=0) for k, f in add_fns.items()}
    t_call = medians(threaded(call_fns, states, batch, repeats=3 * repeats))
    case = f"add [{LANES}, {t_len}] into {SIZE // 1000}k ndim=2, donated"
    return [
        Row("buffer", case + f", in scan of {n_scan}", "flashbax trajectory buffer add",
            t_scan["rlbuf"] / n_scan * 1e6, t_scan["ref"] / n_scan * 1e6, "add", "target ratio <= 1.0"),
        Row("buffer", case + ", jitted call", "flashbax trajectory buffer add",
            t_call["rlbuf"] * 1e6, t_call["ref"] * 1e6, "add", "target ratio <= 1.0"),
    ]


def call_rows(quick: bool) -> list[Row]:
    repeats = 11 if quick else 51
    rb, state = _full_buffer(2)
    copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)  # noqa: E731

    def threaded_state(f):  # sample returns (state, batch, info): thread the state
        return lambda s, key: f(s, key)[0]

    readme = jax.jit(rb.sample, donate_argnums=0)  # as the README writes it
    donated = jax.jit(lambda s, key: rb.sample(s, key), donate_argnums=0)
    fns = {"readme": threaded_state(readme), "donated": threaded_state(donated),
           "undonated": threaded_state(jax.jit(rb.sample))}
    states = {k: copy(state) for k in fns}
    del state
    t = medians(threaded(fns, states, jax.random.key(5), repeats=repeats))
    case = f"uniform sample {SAMPLE} from {SIZE // 1000}k ndim=2 ({LANES} lanes), one jitted call per sample"
    return [
        Row("buffer", case + ": README's jax.jit(rb.sample, donate_argnums=0)", "donated jitted call",
            t["readme"] * 1e6, t["donated"] * 1e6, "call", "target ratio <= 1.1"),
        Row("buffer", case + ": README's jax.jit(rb.sample, donate_argnums=0)", "undonated jax.jit(rb.sample)",
            t["readme"] * 1e6, t["undonated"] * 1e6, "call",
            "the undonated call copies the storage (sample returns the state)"),
    ]


def run(quick: bool = False) -> list[Row]:
    return sample_rows(quick) + add_rows(quick) + call_rows(quick)


if __name__ == "__main__":
    main_for(run, "rlbuf replay-buffer core benchmark")
