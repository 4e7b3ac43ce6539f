"""What a sampler's state can do, stated as marker types.

State-level setters (``rlbuf.set_alpha``, ``rlbuf.set_beta``, ``rlbuf.set_policy_version``)
act on "every sampler state in this pytree that can do X". They find those states by the
marker type their class derives from, never by field names, so a new sampler gets a setter
by deriving from the marker and implementing its one method; the setters work unchanged on
plain, sharded, per-worker and ensemble states (any pytree holding such states, with or
without leading group axes).

- :class:`Exponents`: prioritized states; ``with_exponents(alpha, beta)``.
- :class:`PolicyVersioned`: states that hold the learner's current policy version;
  ``with_policy_version(version)``.
- :class:`Consuming`: states that make stored items unavailable after sampling them
  (``consume_after_n_samples``); ``consumed()`` counts them.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


class Exponents:
    """A prioritized sampler state: it holds the exponents ``alpha`` / ``beta``."""

    def with_exponents(self, alpha=None, beta=None) -> "Exponents":
        """The state with ``alpha`` and/or ``beta`` (scalars, possibly traced) set; ``None``:
        unchanged. A new ``alpha`` re-exponentiates the stored priorities."""
        raise NotImplementedError


class PolicyVersioned:
    """A sampler state holding the learner's current policy version (``version``)."""

    def with_policy_version(self, version) -> "PolicyVersioned":
        """The state with the current version set to ``version`` (int scalar, possibly traced)."""
        raise NotImplementedError


class Consuming:
    """A sampler state whose items are consumed (no longer stored) after being sampled."""

    def consumed(self):
        """int32 scalar: written items that are consumed (summed over leading group axes)."""
        raise NotImplementedError


def update_all(state: Any, marker: type, fn: Callable, who: str, what: str) -> Any:
    """``state`` with every sub-state that is a ``marker`` replaced by ``fn(sub_state)``.

    Raises ``TypeError`` naming ``who`` and ``what`` (the kind of sampler) when it holds none."""
    found = []

    def visit(x):
        if not isinstance(x, marker):
            return x
        found.append(True)
        return fn(x)

    out = _tree_map(visit, state, marker)
    if not found:
        raise TypeError(f"{who}: the state holds no {what} sampler state "
                        f"(none is a {marker.__module__}.{marker.__name__})")
    return out


def find_all(state: Any, marker: type) -> list:
    """Every sub-state of ``state`` that is a ``marker``."""
    return [x for x in jax.tree_util.tree_leaves(state, is_leaf=lambda y: isinstance(y, marker))
            if isinstance(x, marker)]


def _tree_map(fn, state, marker):
    return jax.tree_util.tree_map(fn, state, is_leaf=lambda y: isinstance(y, marker))


def consumed_items(sampler_state: Any):
    """int32 scalar: items of ``sampler_state`` (a sampler state, possibly with leading group
    axes) that are stored but consumed (:class:`Consuming`); 0 when it consumes nothing."""
    return sum((s.consumed() for s in find_all(sampler_state, Consuming)), jnp.zeros((), jnp.int32))
