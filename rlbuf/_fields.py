"""Normalised fields of frozen configuration dataclasses, without mutating them after construction.

A field whose default is a :class:`Converted` descriptor (Python's "descriptor-typed fields"
of :mod:`dataclasses`) converts the value given to the constructor as the generated
``__init__`` sets it, so ``SliceSampler(traj_key=["a", "b"])`` stores ``("a", "b")``, and
equality, hashing and ``repr`` see the normalised value. The object is never written after
``__init__`` (no ``object.__setattr__`` in ``__post_init__``): assigning again raises
``FrozenInstanceError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from rlbuf import _tree


class Converted:
    """Default of a dataclass field whose value is ``convert(value)``.

    ``alias_of``: this field is an alias of an earlier field: a non-``None`` value is stored
    (converted) in that field, which must be unset or equal, and this one reads ``None``.
    """

    def __init__(self, default: Any, convert: Callable[[Any], Any], alias_of: Optional[str] = None):
        self.default = default
        self.convert = convert
        self.alias_of = alias_of

    def __set_name__(self, owner, name):
        self.name = name
        self.slot = f"_{name}__converted"

    def __get__(self, obj, objtype=None):
        if obj is None:  # the dataclass machinery asks for the default
            return self.default
        return obj.__dict__.get(self.slot, self.default)

    def __set__(self, obj, value):
        if self.slot in obj.__dict__:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {self.name!r}")
        value = self.convert(value)
        if self.alias_of is not None and value is not None:
            target = next(c.__dict__[self.alias_of] for c in type(obj).__mro__ if self.alias_of in c.__dict__)
            current = obj.__dict__.get(target.slot)
            if current is not None and current != value:
                raise ValueError(f"{type(obj).__name__}: {self.alias_of} and its alias {self.name} disagree")
            obj.__dict__[target.slot] = value
            value = None
        obj.__dict__[self.slot] = value


def _key_or_none(key):
    return None if key is None else _tree.as_tuple(key)


def key(default=None, alias_of: Optional[str] = None) -> Converted:
    """A buffer key field: a string or a sequence of strings, stored as a tuple (``None`` kept)."""
    return Converted(_key_or_none(default), _key_or_none, alias_of)


def _keys_or_none(keys):
    if keys is None:
        return None
    return (_tree.as_tuple(keys),) if isinstance(keys, str) else tuple(_tree.as_tuple(k) for k in keys)


def keys(default=None) -> Converted:
    """A field of several buffer keys (a sequence of keys, or one string key), stored as a tuple
    of tuples (``None`` kept)."""
    return Converted(_keys_or_none(default), _keys_or_none)


def dtype_name(default) -> Any:
    """A dtype field, stored as its name (``jnp.float32`` and ``"float32"`` compare equal).

    Typed ``Any`` like :func:`dataclasses.field`: the field is declared ``name: str = dtype_name(...)``
    and its instances read the name (a ``str``); the class attribute is the :class:`Converted`."""
    return Converted(np.dtype(default).name, lambda d: np.dtype(d).name)
