"""Nested-dict pytree helpers: key paths, lookup and the leaf specs used to validate ``add``.

A key is a string or a tuple of strings (``("next", "observation")`` means
``batch["next"]["observation"]``). Batches may also be written TorchRL-style with tuple keys
(``{("next", "obs"): x}``, alone or mixed with nested dicts): :func:`nest` turns them into
nesting before anything else looks at the tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

Key = Union[str, tuple]


def as_tuple(key: Key) -> tuple:
    return (key,) if isinstance(key, str) else tuple(key)


def path_to_key(path) -> tuple:
    """A ``jax.tree_util`` key path as a tuple of plain names."""
    out = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                out.append(getattr(p, attr))
                break
        else:  # pragma: no cover - unknown key type
            out.append(str(p))
    return tuple(out)


def key_str(key: Key) -> str:
    key = as_tuple(key)
    return repr(key[0]) if len(key) == 1 else repr(key)


def get(tree: Any, key: Key) -> Any:
    """``tree[k0][k1]...`` with a clear error naming the missing key."""
    node = tree
    for i, k in enumerate(as_tuple(key)):
        try:
            node = node[k]
        except (KeyError, TypeError, IndexError):
            raise KeyError(
                f"key {key_str(key)} not found in the batch (missing {key_str(as_tuple(key)[: i + 1])})"
            ) from None
    return node


def has(tree: Any, key: Key) -> bool:
    try:
        get(tree, key)
        return True
    except KeyError:
        return False


def set_in(tree: dict, key: Key, value: Any) -> dict:
    """A copy of nested dict ``tree`` with ``key`` set to ``value`` (copies only the path)."""
    key = as_tuple(key)
    out = dict(tree)
    if len(key) == 1:
        out[key[0]] = value
    else:
        out[key[0]] = set_in(tree.get(key[0], {}), key[1:], value)
    return out


def leaves_with_keys(tree: Any) -> list[tuple[tuple, Any]]:
    return [(path_to_key(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _what(x) -> str:
    return f"a Python {type(x).__name__}" if isinstance(x, (bool, int, float, complex)) else type(x).__name__


def pytree_dataclass(cls):
    """A frozen dataclass registered as a pytree (every field a child). gymnax's
    EnvState/EnvParams are such dataclasses (with ``.replace``); their subclasses need only
    these two steps, so rlbuf does not import flax for them."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


def leaf_spec(x, key: Key | None = None, owner: str = "") -> tuple[tuple, np.dtype]:
    """``(shape, dtype)`` of a leaf as JAX stores it: the dtype canonicalized exactly as
    ``jax.eval_shape``/``jnp.asarray`` would (float64 -> float32 and int64 -> int32 without
    ``jax_enable_x64``), so an eager ``init`` from numpy arrays gives the layout a jitted ``add``
    sees. Python scalars have shape ``()`` (callers then name the missing batch dims).

    Raises ``TypeError`` naming ``key`` for typed PRNG-key leaves (a buffer stores plain arrays:
    store ``jax.random.key_data(k)``) and for leaves that are not arrays at all.
    """
    where = f"{owner}: " if owner else ""
    name = f"key {key_str(key)}" if key is not None else "a leaf"
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        if not isinstance(x, (bool, int, float, complex, np.generic)):
            raise TypeError(f"{where}{name} is {_what(x)}, not an array")
        dtype = np.result_type(x)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(
            f"{where}{name} holds typed PRNG keys ({dtype}); buffers store plain arrays: store "
            f"jax.random.key_data(keys) and rewrap sampled ones with jax.random.wrap_key_data"
        )
    try:
        dtype = jax.dtypes.canonicalize_dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{where}{name} has dtype {dtype}, which JAX cannot store") from e
    return tuple(int(d) for d in np.shape(x)), np.dtype(dtype)


def nest(tree: Any, owner: str = "") -> Any:
    """``tree`` with TorchRL-style tuple keys turned into nesting and list leaves into arrays.

    ``{"obs": a, ("next", "obs"): b}`` -> ``{"obs": a, "next": {"obs": b}}`` (JAX cannot even
    flatten a dict that mixes string and tuple keys); ``{"act": [0, 1]}`` -> ``{"act":
    jnp.asarray([0, 1])}`` (a list is one array, not a pytree of scalars). Only dicts are
    rebuilt; other values pass through. Raises ``ValueError`` naming the key when one key is
    given twice (``("next", "obs")`` and ``{"next": {"obs": ...}}``) or is both a leaf and a
    dict of keys, and ``TypeError`` for an empty or non-string tuple key.
    """
    if not isinstance(tree, dict):
        return tree
    where = f"{owner}: " if owner else ""
    out: dict = {}

    def put(node: dict, path: tuple, value, full: tuple):
        head, rest = path[0], path[1:]
        if not rest:
            if isinstance(value, dict):
                value = nest(value, owner)
                if head in node and isinstance(node[head], dict):
                    for k, v in value.items():
                        put(node[head], (k,), v, full + (k,))
                    return
            elif isinstance(value, list):
                value = jnp.asarray(value)
            if head in node:
                raise ValueError(f"{where}key {key_str(full)} is given twice (as a tuple key and as nesting)")
            node[head] = value
            return
        child = node.setdefault(head, {})
        if not isinstance(child, dict):
            raise ValueError(f"{where}key {key_str(full[: len(full) - len(rest)])} is both a leaf and a dict of keys")
        put(child, rest, value, full)

    for k, v in tree.items():
        if isinstance(k, tuple):
            if not k or not all(isinstance(p, str) for p in k):
                raise TypeError(f"{where}tuple key {k!r} must be a non-empty tuple of strings")
            put(out, k, v, k)
        else:
            put(out, (k,), v, (k,))
    return out


def check_prng_key(key: Any, owner: str) -> None:
    """Raise ``TypeError`` unless ``key`` looks like a PRNG key (typed, or raw ``uint32``
    ``[2]``/``[4]``). Catches TorchRL's habit ``rb.sample(state, 32)``."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or dtype == np.uint32):
        return
    hint = (" (batch_size is fixed at construction: ReplayBuffer(..., batch_size=N))"
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool) else "")
    got = repr(key) if isinstance(key, (int, float, np.integer)) else f"{type(key).__name__} {dtype or ''}"
    raise TypeError(f"{owner}: the second argument must be a PRNG key (jax.random.key(seed)), got {got}{hint}")


def expand_right(m, x):
    """``m`` (``[*B, T]``) reshaped with trailing 1s to broadcast against ``x`` (``[*B, T, ...]``)."""
    return m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
