"""Nested-dict pytree helpers: key paths, lookup and the leaf specs used to validate ``add``.

A key is a string or a tuple of strings (``("next", "observation")`` means
``batch["next"]["observation"]``).
"""

from __future__ import annotations

from typing import Any, Union

import jax
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


def leaf_spec(x) -> tuple[tuple, np.dtype]:
    return tuple(int(d) for d in np.shape(x)), np.dtype(x.dtype)
