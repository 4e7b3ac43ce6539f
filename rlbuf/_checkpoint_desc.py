"""What ``rlbuf.checkpoint`` stores beside the arrays, and compares on restore: a per-leaf
description (key path, shape, dtype, key impl), a structured, JSON description of the tree
structure (node types and their static metadata, e.g. ``BufferState.layout``), and a checksum
per leaf.

Why a structured description rather than ``str(treedef)``: the printed form of a treedef is
JAX's, changes between versions, and holds memory addresses of static objects; the description
here is built from ``PyTreeDef.node_data()``/``children()`` and plain Python values, so two
identical structures compare equal across processes and JAX versions, and a difference is
reported at its field (``BufferState/aux[0].Layout.capacity: saved 8, target 16``).

Checksums: one 32-bit sum per leaf over its bytes read as uint32 words, each word weighted by
an odd function of its flat position (``sum(w * odd(i)) mod 2^32``). A position-weighted *sum*
is independent of how the array is sharded (every process computes it with one jitted
reduction over the global array, multi-host too), costs one multiply-add per word (one pass,
on the arrays' devices), and detects every single-bit flip (a flip changes the sum by
``+-2^b * odd != 0 mod 2^32``) and chunks moved to other positions; other corruptions go
undetected with probability ~2^-32. (Why not zlib's CRC32: it needs the bytes on the host,
serially, which is slower than orbax's own write on CPU, and has no sharded form.)

Class paths: the description names node types and static classes ``module.qualname``, as the
release that saved it defined them. A class whose module has moved since (``rlbuf._moved``:
``rlbuf.replay_buffer.BufferState`` is ``rlbuf.buffers.replay_buffer.BufferState`` since
0.3.0) is compared by its current path (:func:`renamed`), so checkpoints of earlier releases
keep restoring; new checkpoints record the current paths.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import zlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _moved

_K1 = 0x9E3779B1  # odd (golden-ratio) multiplier of the position


# --------------------------------------------------------------------------- leaves


@dataclasses.dataclass(frozen=True)
class Leaf:
    """How one leaf is stored: ``shape``/``dtype`` of the stored array (``key_data`` for typed
    keys, whose impl name is ``key_impl``); ``kind`` is ``"jax"``, ``"numpy"`` or ``"scalar"``."""

    path: str
    shape: tuple
    dtype: str
    key_impl: Optional[str]
    kind: str

    def to_json(self) -> dict:
        return {"path": self.path, "shape": list(self.shape), "dtype": self.dtype, "key_impl": self.key_impl}

    def text(self) -> str:
        key = f", typed PRNG key impl {self.key_impl!r} (stored as key_data)" if self.key_impl else ""
        return f"shape {self.shape} dtype {self.dtype}{key}"


def is_key_dtype(dtype) -> bool:
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def key_spec(x) -> tuple:
    """``(impl name, key_data ShapeDtypeStruct)`` of a typed key array or abstract key array,
    using only tracing (works for ``ShapeDtypeStruct`` and for deleted/donated arrays)."""
    impl = []

    def data(k):
        impl.append(str(jax.random.key_impl(k)))
        return jax.random.key_data(k)

    out = jax.eval_shape(data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return impl[0], out


def describe_leaf(path: str, x) -> Leaf:
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        dtype = np.asarray(x).dtype
        return Leaf(path, (), dtype.name, None, "scalar")
    if isinstance(x, (np.ndarray, np.generic)):
        return Leaf(path, tuple(x.shape), np.dtype(x.dtype).name, None, "numpy")
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        if is_key_dtype(x.dtype):
            impl, data = key_spec(x)
            return Leaf(path, tuple(data.shape), np.dtype(data.dtype).name, impl, "jax")
        return Leaf(path, tuple(int(d) for d in x.shape), np.dtype(x.dtype).name, None, "jax")
    raise TypeError(
        f"rlbuf.checkpoint: leaf {path} is a {type(x).__name__}; states may only hold jax/numpy arrays "
        "(or jax.ShapeDtypeStruct in a restore target) and Python scalars"
    )


def describe(tree) -> tuple:
    """``(treedef, leaves, [Leaf])`` of a state or abstract state."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    descs = [describe_leaf(jax.tree_util.keystr(p), x) for p, x in flat]
    return treedef, [x for _, x in flat], descs


# --------------------------------------------------------------------------- structure


def _type_name(t) -> str:
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', getattr(t, '__name__', repr(t)))}"


def _static(v) -> Any:
    """A JSON value describing static metadata ``v`` (no memory addresses, no JAX printing)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.dtype):
        return {"dtype": v.name}
    if isinstance(v, jax.tree_util.PyTreeDef):
        return {"treedef": structure(v)}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {"class": _type_name(type(v)),
                "fields": {f.name: _static(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, (tuple, list)):
        return [_static(x) for x in v]
    if isinstance(v, dict):
        return {"dict": [[_static(k), _static(x)] for k, x in v.items()]}
    if isinstance(v, type) or callable(v):
        return {"callable": _type_name(v)}
    return {"object": _type_name(type(v))}


def structure(treedef) -> Any:
    """JSON description of a treedef: ``"*"`` for a leaf, else ``{"node": type, "aux": static
    metadata, "children": [...]}``."""
    nd = treedef.node_data()
    if nd is None:
        return "*"
    typ, aux = nd
    return {"node": _type_name(typ), "aux": _static(aux), "children": [structure(c) for c in treedef.children()]}


#: The keys of a structure description whose value is a class path (``module.qualname``).
_NAMED = ("node", "class", "callable", "object")


@functools.lru_cache(maxsize=None)
def current_type_name(name: str) -> str:
    """Class path ``name`` as this release writes it: under a module that has moved since an
    earlier release (``rlbuf._moved.MOVED``), the object's current path, e.g.
    ``rlbuf.replay_buffer.BufferState`` -> ``rlbuf.buffers.replay_buffer.BufferState``,
    ``rlbuf.storage.Layout`` -> ``rlbuf.storages.base.Layout`` (the old module re-exported it).
    Other names are returned unchanged. Only modules named in the table are imported, never a
    name read from a checkpoint."""
    found = _moved.split_old(name)
    if found is None or not found[1]:
        return name
    old, qualname = found
    new = f"{_moved.MOVED[old]}.{qualname}"
    obj: Any = importlib.import_module(_moved.MOVED[old])
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    # A re-export names the object where it is defined, as _type_name does when saving.
    return _type_name(obj) if isinstance(obj, type) or callable(obj) else new


def renamed(desc) -> Any:
    """A structure description (:func:`structure`) with every class path of an earlier release
    named as this release names it (:func:`current_type_name`)."""
    if isinstance(desc, list):
        return [renamed(x) for x in desc]
    if not isinstance(desc, dict):
        return desc
    out: dict = {}
    for k, v in desc.items():
        if k in _NAMED and isinstance(v, str):
            out[k] = current_type_name(v)
        elif k == "fields" and isinstance(v, dict):  # dataclass field names: never class paths
            out[k] = {f: renamed(x) for f, x in v.items()}
        else:
            out[k] = renamed(v)
    return out


def _short(v, width: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def first_difference(saved, want, path: str = "") -> Optional[str]:
    """Where two structure descriptions first differ (``None`` if equal), as
    ``"<path>: saved X, target Y"``."""
    if type(saved) is not type(want):
        return f"{path or 'root'}: saved {_short(saved)}, target {_short(want)}"
    if isinstance(saved, dict):
        if "node" in saved and "node" in want and saved["node"] != want["node"]:
            return f"{path or 'root'}: saved node {saved['node']}, target {want['node']}"
        here = path + ("/" + saved["node"].rsplit(".", 1)[-1] if "node" in saved else "")
        if "class" in saved and saved.get("class") == want.get("class"):
            here = path + "." + saved["class"].rsplit(".", 1)[-1]
        if set(saved) != set(want):
            return f"{here or 'root'}: saved fields {sorted(saved)}, target {sorted(want)}"
        for k in saved:
            if k in ("node", "class"):
                if saved[k] != want[k]:
                    return f"{here or 'root'}: saved {k} {saved[k]}, target {want[k]}"
                continue
            sub = here if k in ("fields", "children", "dict", "treedef") else f"{here}.{k}"
            d = first_difference(saved[k], want[k], sub)
            if d:
                return d
        return None
    if isinstance(saved, list):
        if len(saved) != len(want):
            return f"{path or 'root'}: saved {len(saved)} entries, target {len(want)}"
        for i, (a, b) in enumerate(zip(saved, want)):
            d = first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    if saved != want:
        return f"{path or 'root'}: saved {_short(saved)}, target {_short(want)}"
    return None


# --------------------------------------------------------------------------- checksums


def _words_np(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return x.reshape(-1).astype(np.uint32)
    size = x.dtype.itemsize
    if size % 4 == 0:
        return x.reshape(-1).view(np.uint32)
    return x.reshape(-1).view(np.uint8 if size == 1 else np.uint16).astype(np.uint32)


def _term(w, i, xp):
    """The per-word term ``w * odd(i)`` (uint32 arithmetic wraps): one multiply-add per word."""
    return w * ((i * xp.uint32(_K1)) | xp.uint32(1))


def checksum_np(x) -> int:
    w = _words_np(np.asarray(x))
    out = 0
    chunk = 1 << 22  # bounded temporaries for large host leaves
    for s in range(0, w.shape[0], chunk):
        ws = w[s : s + chunk]
        i = np.arange(s, s + ws.shape[0], dtype=np.uint64).astype(np.uint32)
        with np.errstate(over="ignore"):
            out = (out + int(_term(ws, i, np).sum(dtype=np.uint32))) & 0xFFFFFFFF
    return out


@functools.partial(jax.jit, static_argnames="flat")
def _checksum_jax(x, flat: bool):
    if x.dtype == jnp.bool_:
        w = x.astype(jnp.uint32)
    elif x.dtype.itemsize % 4 == 0:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte dtypes: a trailing [2] word axis
    else:
        w = jax.lax.bitcast_convert_type(x, jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16).astype(jnp.uint32)
    if flat:
        # One device: the flat view is free and needs one iota.
        w = w.reshape(-1)
        i = jax.lax.iota(jnp.uint32, w.shape[0])
    else:
        # Flat word index from iotas (no reshape: that could move a sharded array's data).
        i = jnp.zeros(w.shape, jnp.uint32)
        stride = 1
        for d in range(w.ndim - 1, -1, -1):
            i = i + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d) * jnp.uint32(stride & 0xFFFFFFFF)
            stride *= w.shape[d]
    return jnp.sum(_term(w, i, jnp), dtype=jnp.uint32)


def checksums(arrays: list) -> list:
    """The checksum (a Python int) of each array (jax or numpy; typed keys as key_data). jax
    arrays are summed on their devices (dispatched together, one transfer of 4 bytes each)."""
    # Arrays in host memory (memory_kind="pinned_host" storage) are summed by numpy.
    on_device = lambda x: isinstance(x, jax.Array) and getattr(x.sharding, "memory_kind", None) in (None, "device")  # noqa: E731
    pending = [_checksum_jax(x, flat=len(x.sharding.device_set) == 1) if on_device(x) else None for x in arrays]
    return [int(np.asarray(p)) if p is not None else checksum_np(x) for x, p in zip(arrays, pending)]


def text_crc(obj) -> int:
    """CRC32 of the canonical JSON text of ``obj`` (guards the description itself)."""
    return zlib.crc32(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
