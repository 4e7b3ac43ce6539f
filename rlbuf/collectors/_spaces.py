"""Uniform random actions from an env's action space, and the action spec used for checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax


def plain_dicts(tree: Any) -> Any:
    """``tree`` with every mapping (gymnax's ``Dict`` space samples ``OrderedDict``s) as a plain
    ``dict``, so random actions and a policy's dict actions have one tree structure (the two
    branches of the random/policy ``cond`` must)."""
    if isinstance(tree, Mapping):
        return {k: plain_dicts(v) for k, v in tree.items()}
    if type(tree) in (tuple, list):
        return type(tree)(plain_dicts(v) for v in tree)
    return tree


def sample_action(env: Any, key: jax.Array, params: Any) -> Any:
    """One uniform random action of ``env.action_space(params)`` (gymnax spaces: Discrete,
    Box, Dict, Tuple all implement a jittable ``sample(key)``); mappings as plain dicts."""
    return plain_dicts(env.action_space(params).sample(key))


def has_action_space(env: Any) -> bool:
    return callable(getattr(env, "action_space", None))


def action_spec(env: Any, params: Any) -> Any | None:
    """Per-env action shapes/dtypes (a pytree of ``jax.ShapeDtypeStruct``), or None when the
    env exposes no usable action space (then policy outputs are not checked)."""
    if not has_action_space(env):
        return None
    try:
        return jax.eval_shape(lambda k, p: sample_action(env, k, p), jax.random.key(0), params)
    except NotImplementedError:
        return None
