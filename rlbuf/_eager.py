"""Eager calls of a pure method run as one compiled program.

Called outside any transformation (a notebook cell, a script or a test that never wrapped it
in ``jax.jit``), ``rb.add(state, batch)`` would run its few hundred primitives one at a time:
JAX compiles and dispatches each separately. Measured on 2 cores (XLA's default flags): the
first ``add`` of a ``[8, 128]`` batch into a 100k slice buffer took 9.0 s of CPU that way, 1.6 s
as one program, and every later call dispatched each primitive again.
:func:`compiled_when_eager` routes such calls through one ``jax.jit`` of the method, the
(frozen, hashable) object static: the program is cached per object and argument shapes (an
eager loop compiles once; an equal buffer reuses it). A call with any traced argument (the
method inside the user's ``jit``, ``vmap``, ``grad`` or ``shard_map``) runs the method inline as
before: the user's programs are unchanged. The methods are pure, so the results are the same
either way.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import jax
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

# Leaves a jitted call takes as they are (anything else, e.g. a string, runs the method eagerly).
_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


def is_traced(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a tracer (the call is inside a JAX transformation)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def compiled_when_eager(method: F) -> F:
    """Decorate a pure method ``method(self, *args)`` of a frozen, hashable object: eager calls
    (no traced argument, every leaf an array or a number, ``self`` hashable) run
    ``jax.jit(method, static_argnums=0)``; other calls run ``method`` itself."""
    jitted = jax.jit(method, static_argnums=0)

    @functools.wraps(method)
    def call(self, *args):
        try:
            leaves = jax.tree.leaves(args)
        except (TypeError, ValueError):  # e.g. a dict mixing str and tuple keys: the method normalizes it
            return method(self, *args)
        if any(isinstance(x, jax.core.Tracer) or not isinstance(x, _ARRAY_LIKE) for x in leaves):
            return method(self, *args)
        try:
            hash(self)
        except TypeError:  # e.g. a transform that is an unhashable object: no cache key
            return method(self, *args)
        return jitted(self, *args)

    call.jitted = jitted  # type: ignore[attr-defined]  # (its cache, for tests)
    return call  # type: ignore[return-value]
