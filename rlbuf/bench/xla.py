"""The XLA tricks of ``rlbuf._xla``, on against off: ``python -m rlbuf.bench.xla [--quick]``.

The CPU-gated forms (``materialize``, ``wrap_once``, ``searchsorted_method``) are traced
once as on a CPU backend and once with the generic forms other backends get
(``rlbuf._xla.generic_forms()``), and the same work is timed with each, repeats interleaved:

- prioritized: ``sample`` 256 + ``update_priority`` from a full 1M buffer (100k with
  ``--quick``), in a jitted scan (the sum tree's descent: ``materialize`` per level);
- slice: add ``[4, 1]`` + 32 slices of 10 from 100k, ndim=2, in a jitted scan (``wrap_once``,
  ``searchsorted_method``).

A ratio below 1 means the CPU form pays on this machine. Compile time never counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlbuf import _xla
from rlbuf.bench import prioritized as prio_bench
from rlbuf.bench import slice as slice_bench
from rlbuf.bench._timing import Row, main_for, threaded


def _trace(make, generic: bool):
    """``make()`` built and traced (compiled on first call) with the generic forms forced or not."""
    fn = make()

    def run(carry, xs):
        with _xla.generic_forms(generic):
            return fn(carry, xs)

    return run


def prioritized_rows(quick: bool) -> list[Row]:
    size, iters, repeats = (100_000, 50, 5) if quick else (1_000_000, 100, 11)
    state, step = prio_bench.filled(size, prio_bench.BRANCHING)
    fns = {g: _trace(lambda: prio_bench.scan_loop(step, iters), g) for g in (False, True)}
    copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)  # noqa: E731
    carries = {g: (copy(state), jnp.zeros((), jnp.float32)) for g in fns}
    del state
    t = threaded(fns, carries, jax.random.key(1), repeats=repeats)
    return [Row("xla", f"prioritized sample {prio_bench.BATCH} + update from {size // 1000}k, in scan: "
                "materialize as a loop (CPU form)", "optimization_barrier (generic form)",
                t[False][0] / iters * 1e6, t[True][0] / iters * 1e6, "iter", "the sum tree's per-level barrier")]


def slice_rows(quick: bool) -> list[Row]:
    size, iters, repeats = 100_000, (50 if quick else 200), (5 if quick else 15)
    rb, state, _ = slice_bench.filled(size)
    adds = slice_bench.transitions(jax.random.key(2), (iters, slice_bench.LANES, 1))
    fns = {g: _trace(lambda: slice_bench.scan_loop(rb.add, slice_bench.sample_ours(rb)), g) for g in (False, True)}
    copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)  # noqa: E731
    carries = {g: (copy(state), jax.random.key(3), jnp.zeros((), jnp.float32)) for g in fns}
    del state
    t = threaded(fns, carries, adds, repeats=repeats)
    return [Row("xla", f"add 4x1 + slice 32x10 from {size // 1000}k ndim=2, in scan: compare-subtract wrap, "
                "compare_all searchsorted (CPU forms)", "modulo, scan searchsorted (generic forms)",
                t[False][0] / iters * 1e6, t[True][0] / iters * 1e6, "iter", "")]


def run(quick: bool = False) -> list[Row]:
    return prioritized_rows(quick) + slice_rows(quick)


if __name__ == "__main__":
    main_for(run, "rlbuf XLA-tricks benchmark")
