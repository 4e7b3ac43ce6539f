"""XLA tricks, named and in one place.

Each is a workaround for how XLA compiles a pattern on a given backend; their measured
effect is in ``BENCHMARKS.md`` ("XLA tricks"), not here.

- :func:`run_at_most_once`: a conditional update of a large carry without copying it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def run_at_most_once(pred, body, carry, deps=()):
    """``body(carry, *deps) if pred else carry``, with ``carry`` updated in place.

    Why not ``lax.cond``: a cond's untaken identity branch copies its large operands (an
    ``[L, capacity]`` queue, a permutation, a sum tree) on every call, whereas a while loop's
    carry is updated in place. ``deps`` (arrays the body reads but does not return) go through
    an ``optimization_barrier`` together with the carry, which keeps XLA from hoisting the
    body's O(capacity) work, loop-invariant but for the carry, out of the loop (it would then
    run on every call).
    """

    def step(c):
        x, d = jax.lax.optimization_barrier((c[0], tuple(deps))) if deps else (c[0], ())
        return body(x, *d), False

    return jax.lax.while_loop(lambda c: c[1], step, (carry, jnp.asarray(pred, bool)))[0]
