"""Policy calls and the checks on what a policy returns (actions, extras, carry).

Everything here runs at trace time: a bad output raises naming the key, shape or dtype
before anything is compiled. ``lead`` is the leading env shape of every policy input and
output: ``()`` for one env, ``(B,)`` for ``B`` envs.

Policy forms:
    ``policy(params, obs, key) -> action`` or ``-> (action, extras)``; with a carry
    (``policy_carry=init_fn``) ``policy(params, obs, key, carry) -> (action, extras, new_carry)``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlbuf.collectors._env import strong

#: Root keys of a batch that the collector writes itself; policy extras may not use them.
RESERVED_KEYS = frozenset({"observation", "action", "step_count", "next", "collector", "is_init"})


def _path(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def call_policy(policy: Callable, params: Any, obs: Any, key: jax.Array, carry: Any = None,
                with_carry: bool = False) -> tuple[Any, dict, Any]:
    """Call ``policy`` once; returns ``(action, extras, new_carry)`` (``new_carry`` None
    without a carry). Unchecked: see :func:`check_action`, :func:`check_extras`,
    :func:`check_carry`."""
    if with_carry:
        out = policy(params, obs, key, carry)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(
                "with policy_carry the policy must return (action, extras, new_carry), got "
                f"{type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, tuple) else "")
            )
        action, extras, new_carry = out
        if extras is None:
            extras = {}
    else:
        out = policy(params, obs, key)
        if isinstance(out, tuple) and len(out) == 3 and (out[1] is None or isinstance(out[1], dict)):
            # the recurrent form without the collector knowing of a carry: say so, instead of
            # a structure/dtype error about the tuple further on
            raise TypeError(
                "the policy returned a 3-tuple (action, extras, new_carry) but the collector has no "
                "policy_carry: pass policy_carry=init_fn (init_fn(num_envs) -> carry; the policy is then "
                "policy(params, obs, key, carry) -> (action, extras, new_carry)), or return action or "
                "(action, extras)"
            )
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            action, extras = out
        else:
            action, extras = out, {}
        new_carry = None
    if not isinstance(extras, dict):
        raise TypeError(f"policy extras must be a dict of arrays, got {type(extras).__name__}")
    return action, dict(extras), new_carry


def check_action(action: Any, spec: Any, lead: tuple[int, ...], num_envs) -> None:
    """``action`` must have the action space's structure, shape ``lead + space shape`` and
    dtype (``spec``: a pytree of ``ShapeDtypeStruct``; None skips the check)."""
    if spec is None:
        return
    a_leaves, a_def = jax.tree.flatten(action)
    s_leaves, s_def = jax.tree.flatten(spec)
    if a_def != s_def:  # type: ignore[operator]  # jax's PyTreeDef is untyped to mypy
        raise TypeError(f"policy action structure {a_def} does not match the action space's {s_def}")
    for a, s in zip(a_leaves, s_leaves):
        got = tuple(jnp.shape(a))
        want = lead + tuple(s.shape)
        if got != want:
            raise ValueError(
                f"policy returned an action of shape {got}, expected {want} "
                f"(num_envs={num_envs}, action space shape {tuple(s.shape)})"
            )
        if jnp.result_type(a) != s.dtype:
            raise TypeError(
                f"policy returned an action of dtype {jnp.result_type(a)}, the env's "
                f"action space has dtype {s.dtype}"
            )


def check_extras(extras: dict, lead: tuple[int, ...]) -> None:
    """Extras are stored at the batch root: string keys, none of :data:`RESERVED_KEYS`, every
    leaf with leading dims ``lead`` (one value per env)."""
    for k in extras:
        if not isinstance(k, str):
            raise TypeError(f"policy extras keys must be strings, got {k!r}")
        if k in RESERVED_KEYS:
            raise ValueError(
                f"policy extra {k!r} clashes with a key the collector writes (reserved root keys: "
                f"{sorted(RESERVED_KEYS)}); rename it"
            )
    for path, x in jax.tree_util.tree_leaves_with_path(extras):
        shape = tuple(jnp.shape(x))
        if shape[: len(lead)] != lead:
            raise ValueError(
                f"policy extra {_path(path)} has shape {shape}; its leading dims must be the env "
                f"batch {lead} (one value per env)"
            )


def init_carry(init_fn: Callable, num_envs: int | None, lead: tuple[int, ...]) -> Any:
    """``init_fn(num_envs)``, checked: every leaf an array with leading dims ``lead``."""
    carry = init_fn(num_envs)
    leaves = jax.tree_util.tree_leaves_with_path(carry)
    for path, x in leaves:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"policy_carry({num_envs}) leaf {_path(path)} is a {type(x).__name__}, not an array")
        if tuple(x.shape)[: len(lead)] != lead:
            raise ValueError(
                f"policy_carry({num_envs}) leaf {_path(path)} has shape {tuple(x.shape)}; its leading "
                f"dims must be the env batch {lead}"
            )
    return jax.tree.map(strong, carry)


def check_carry(new_carry: Any, carry: Any) -> None:
    """The policy's ``new_carry`` must have the carry's structure, shapes and dtypes."""
    n_def, c_def = jax.tree.structure(new_carry), jax.tree.structure(carry)
    if n_def != c_def:  # type: ignore[operator]  # jax's PyTreeDef is untyped to mypy
        raise TypeError(f"policy returned a carry of structure {n_def}, expected {c_def} (policy_carry's)")
    for (path, n), c in zip(jax.tree_util.tree_leaves_with_path(new_carry), jax.tree.leaves(carry)):
        if tuple(jnp.shape(n)) != tuple(jnp.shape(c)) or jnp.result_type(n) != jnp.result_type(c):
            raise ValueError(
                f"policy returned carry leaf {_path(path)} of shape {tuple(jnp.shape(n))} and dtype "
                f"{jnp.result_type(n)}, expected {tuple(jnp.shape(c))} {jnp.result_type(c)}"
            )
