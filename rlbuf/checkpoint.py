"""Checkpoints of any rlbuf state (replay buffers, collectors), built on orbax-checkpoint.

    rlbuf.checkpoint.save("/ckpt/buffer", state)                # blocks until written
    state = rlbuf.checkpoint.restore("/ckpt/buffer", target)    # target: state or abstract state

    with rlbuf.checkpoint.Manager("/ckpt/run", max_to_keep=3) as mgr:   # keep the last 3
        mgr.save(step, (buffer_state, collector_state))         # async: writes in the background
        state = mgr.restore(target)                             # latest step (or step=...)

What is saved: every array leaf of the state pytree (storage, cursors, sampler state such as
the without-replacement permutation or priority trees, collector env states, keys and
counters), sharded arrays per shard (orbax writes each host's shards; multi-host works when
every process calls ``save``/``restore`` on a shared directory). Typed PRNG keys
(``jax.random.key``) are saved as their ``key_data`` with the impl name, and rewrapped on
restore. Alongside the arrays a JSON description (``rlbuf._checkpoint_desc``) is saved in the
same atomic step: key path, shape, dtype, key impl and a checksum of every leaf, and a
structured description of the tree structure (node types and static metadata such as
``BufferState.layout``), itself guarded by a CRC.

Restore never trusts the checkpoint for structure: it uses the *target*'s treedef, dtypes and
shardings, and first compares the saved description with the target's, refusing with a
:class:`CheckpointMismatchError` naming the first differing key path (missing/extra leaf, shape,
dtype, key impl), the first difference in the static metadata, or another checkpoint format
(format 1, of the first release, is refused). Classes are compared by their current module
paths: a checkpoint of an earlier release that names ``rlbuf.replay_buffer.BufferState`` (since
moved to ``rlbuf.buffers.replay_buffer``) restores. After reading, every leaf is checked against its
checksum; a damaged checkpoint (a flipped bit, a truncated, missing or modified file) raises
:class:`CheckpointCorruptError` naming the checkpoint directory and the key path. Nothing is
unpickled (orbax stores arrays with tensorstore and metadata as JSON/msgpack).

Atomicity: each save is one orbax step directory, written under a temporary name and renamed
when complete (``<dir>/<step>.orbax-checkpoint-tmp-*`` -> ``<dir>/<step>``); older steps are
deleted only after the new one is finalized, so a save killed midway leaves the previous
checkpoint loadable (the leftover temporary directory is removed by the next save; proven by a
test that SIGKILLs a process in the middle of a 200 MB save).
``save(directory, state)`` is a :class:`Manager` with ``max_to_keep=1``: the directory holds one
checkpoint, replaced atomically on every save.

orbax-checkpoint is an optional dependency (``pip install 'rlbuf[checkpoint]'``), imported only
when a function here is called. With jax 0.12 the first import of orbax makes every function
jitted before it compile once more (orbax changes jax's trace context); import
``orbax.checkpoint`` before compiling the training step to avoid that one recompile.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _checkpoint_desc as cd
from rlbuf._checkpoint_desc import Leaf

__all__ = ["CheckpointCorruptError", "CheckpointMismatchError", "Manager", "metadata", "restore", "save"]

#: Format 2 (this release): structured tree description and per-leaf checksums. Older formats
#: are refused: the state classes changed in the same release, so their structure would not
#: match anyway.
FORMAT = "rlbuf.checkpoint/2"
_STATE = "state"  # orbax item holding the arrays
_META = "rlbuf"  # orbax item holding the JSON description


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree (key paths, shapes, dtypes, key impls or static metadata) differs
    from the restore target's, or it was written in another checkpoint format."""


class CheckpointCorruptError(OSError):
    """The checkpoint's files are damaged: a leaf whose bytes do not match the checksum stored
    at save, an unreadable/truncated/missing file. The message names the checkpoint directory
    and, where one leaf is concerned, its key path."""


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rlbuf.checkpoint needs orbax-checkpoint, an optional dependency: "
            "pip install 'rlbuf[checkpoint]'"
        ) from e
    return ocp


def _key_data_sharding(sharding):
    """The sharding of ``key_data`` (one extra trailing, unsharded dim) for a key array sharded
    as ``sharding``."""
    if sharding is None or isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
        # A spec shorter than the rank leaves the trailing key_data dim replicated.
        return jax.sharding.NamedSharding(sharding.mesh, sharding.spec, memory_kind=sharding.memory_kind)
    raise TypeError(
        f"rlbuf.checkpoint: typed PRNG key leaves with sharding {type(sharding).__name__} are not supported; "
        "use a NamedSharding or a single device"
    )


def _name(i: int) -> str:
    # Flat, fixed-width names: orbax treats dots/slashes in names as nesting, and key paths
    # (".storage['next']...") are kept in the JSON description instead.
    return f"leaf_{i:06d}"


def _to_saveable(x, desc: Leaf):
    if desc.key_impl is not None:
        return jax.random.key_data(x)
    if desc.kind == "scalar":
        return np.asarray(x)
    return x


# --------------------------------------------------------------------------- target checks


def _mismatch(directory, step, what: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"rlbuf.checkpoint.restore: the checkpoint {os.fspath(directory)} (step {step}) does not match "
        f"the target: {what}"
    )


def _corrupt(directory, step, what: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"rlbuf.checkpoint.restore: the checkpoint {os.fspath(directory)} (step {step}) is damaged: {what}"
    )


def _check(meta: dict, treedef, descs: list, directory, step, check_treedef: bool) -> None:
    fmt = meta.get("format")
    if fmt != FORMAT:
        older = isinstance(fmt, str) and fmt.startswith("rlbuf.checkpoint/")
        raise _mismatch(
            directory, step,
            f"it was written in format {fmt!r}, this rlbuf reads {FORMAT!r}"
            + (" (the state structure changed in this release: re-create the checkpoint with this version)"
               if older else ""),
        )
    if meta.get("crc") != cd.text_crc([meta.get("leaves"), meta.get("structure")]):
        raise _corrupt(directory, step, f"its description ({_META}/metadata) does not match its checksum")
    saved = meta["leaves"]
    saved_paths = [s["path"] for s in saved]
    want_paths = [d.path for d in descs]
    if saved_paths != want_paths:
        saved_set, want_set = set(saved_paths), set(want_paths)
        missing = [p for p in want_paths if p not in saved_set]
        extra = [p for p in saved_paths if p not in want_set]
        parts = []
        if missing:
            parts.append(f"key path {missing[0]} is in the target but not in the checkpoint")
        if extra:
            parts.append(f"key path {extra[0]} is in the checkpoint but not in the target")
        if not parts:  # same paths, other order: a different container type somewhere
            i = next(i for i, (a, b) in enumerate(zip(saved_paths, want_paths)) if a != b)
            parts.append(f"leaf {i} is {saved_paths[i]} in the checkpoint but {want_paths[i]} in the target")
        more = len(missing) + len(extra) - len(parts)
        raise _mismatch(directory, step, "; ".join(parts) + (f" ({more} more differences)" if more > 0 else ""))
    for s, d in zip(saved, descs):
        got = Leaf(s["path"], tuple(s["shape"]), s["dtype"], s.get("key_impl"), d.kind)
        if (got.shape, got.dtype, got.key_impl) != (d.shape, d.dtype, d.key_impl):
            raise _mismatch(directory, step, f"key path {d.path}: saved {got.text()}, target expects {d.text()}")
    if check_treedef:
        # Class paths of an earlier release (rlbuf.replay_buffer.BufferState) as they are now.
        diff = cd.first_difference(cd.renamed(meta["structure"]), cd.structure(treedef))
        if diff:
            raise _mismatch(
                directory, step,
                "same leaves but different static metadata in the tree structure (e.g. BufferState.layout or "
                f"a state class) at {diff}",
            )


def _verify(meta: dict, arrays: list, directory, step) -> None:
    """Compare each restored leaf (as stored: typed keys as key_data) with its saved checksum."""
    got = cd.checksums(arrays)
    for s, c in zip(meta["leaves"], got):
        if s["checksum"] != c:
            raise _corrupt(
                directory, step,
                f"key path {s['path']} does not match the checksum stored at save (bit rot or a modified "
                f"file in {os.path.join(os.fspath(directory), str(step), _STATE)}); refusing to restore it",
            )


_LEAF_NAME = re.compile(r"leaf_(\d{6})")


def _read_error(e: Exception, meta: dict, directory, step) -> CheckpointCorruptError:
    """A storage-layer error while reading the arrays, reworded with the checkpoint path and the
    key paths of the leaves it names (orbax/tensorstore name them ``leaf_000123``)."""
    paths = [p["path"] for p in meta["leaves"]]
    names = sorted({int(m) for m in _LEAF_NAME.findall(str(e)) if int(m) < len(paths)})
    what = (f"key path {', '.join(paths[i] for i in names)} cannot be read" if names
            else "its array files cannot be read (missing, truncated or damaged)")
    msg = _LEAF_NAME.sub(lambda m: paths[int(m.group(1))] if int(m.group(1)) < len(paths) else m.group(0), str(e))
    return _corrupt(directory, step, f"{what}: {type(e).__name__}: {msg[:600]}")


def _committed(x) -> bool:
    """Whether the restored leaf must be placed with the target's sharding. Targets without a
    placement (uncommitted arrays, as ``rb.init``/``collector.init`` make, and
    ``ShapeDtypeStruct`` without sharding, as ``jax.eval_shape`` makes) restore uncommitted on
    the default device, like the never-stopped state: a committed leaf would change the jit
    cache key and recompile the training step."""
    if isinstance(x, jax.Array):
        return bool(x.committed)
    return getattr(x, "sharding", None) is not None


def _restore_spec(x, desc: Leaf):
    """What orbax should restore a target leaf as: a ``ShapeDtypeStruct`` with the target's
    sharding for committed jax leaves, a host numpy array otherwise."""
    shape, dtype = desc.shape, np.dtype(desc.dtype)
    if desc.kind != "jax" or not _committed(x):
        # A numpy target (np.empty: pages untouched, no real allocation) makes orbax read into
        # host memory; a ShapeDtypeStruct without sharding would make it reuse the *saved*
        # sharding, which may name devices this process does not have.
        return np.empty(shape, dtype)
    sharding = x.sharding
    if desc.key_impl is not None:
        sharding = _key_data_sharding(sharding)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _to_device(r, x, desc: Leaf):
    """A restored leaf as stored (typed keys as key_data), an uncommitted array on the default
    device where the target leaf has no placement."""
    return jnp.asarray(r) if desc.kind == "jax" and not _committed(x) else r


def _from_restored(r, x, desc: Leaf):
    """A leaf placed by :func:`_to_device` (and checksummed) as the target's leaf type."""
    if desc.key_impl is not None:
        return jax.random.wrap_key_data(r, impl=desc.key_impl)
    if desc.kind == "scalar":
        return type(x)(np.asarray(r).item())
    if desc.kind == "numpy":
        return np.asarray(r)[()] if isinstance(x, np.generic) else np.asarray(r)
    return r


# --------------------------------------------------------------------------- public API


class Manager:
    """A directory of numbered checkpoints of one state structure (an ``orbax``
    ``CheckpointManager`` with rlbuf's tree description and checks).

    Args:
      directory: where the step directories ``<directory>/<step>`` live (created on save).
      max_to_keep: keep only the newest ``max_to_keep`` steps (``None``: keep all). Older steps
        are deleted after a newer one is complete.
      async_save: ``save`` returns after orbax's blocking phase (device-to-host transfers) and
        writes in a background thread; the state may then be updated or donated right away
        (tested with donated ``add``). Call :meth:`wait_until_finished` (or ``close``) before
        relying on the files. ``False``: ``save`` blocks until the checkpoint is complete.

    One writer per directory: a (writing) ``Manager`` removes leftover temporary directories
    when it opens, so do not open one on a directory another process is saving into
    (``restore``/``metadata`` of this module only read). Every process of a multi-host run must
    call ``save``/``restore`` with the same arguments.
    """

    def __init__(self, directory, max_to_keep: Optional[int] = None, *, async_save: bool = True,
                 _reader: bool = False):
        ocp = _ocp()
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"Manager: max_to_keep must be None or a positive int, got {max_to_keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            # Leftovers of a save killed midway (<step>.orbax-checkpoint-tmp-*) are removed.
            cleanup_tmp_directories=not _reader,
            enable_async_checkpointing=async_save,
            create=not _reader,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    # context manager ---------------------------------------------------------------------
    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Wait for pending saves and release orbax's threads."""
        self._mgr.close()

    def wait_until_finished(self) -> None:
        """Block until every pending (async) save is complete on disk."""
        self._mgr.wait_until_finished()

    # steps -------------------------------------------------------------------------------
    def latest_step(self) -> Optional[int]:
        """The newest complete step, or ``None`` if there is none."""
        return self._mgr.latest_step()

    def all_steps(self) -> list:
        """The complete steps, ascending."""
        return sorted(self._mgr.all_steps())

    # save / restore ----------------------------------------------------------------------
    def save(self, step: int, state: Any) -> None:
        """Save ``state`` (any pytree of arrays: buffer/collector states, tuples of them) as
        ``step``, which must be newer than every existing step."""
        ocp = _ocp()
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise ValueError(f"Manager.save: step must be a non-negative int, got {step!r}")
        step = int(step)
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"Manager.save: step {step} is not newer than the latest checkpoint step {latest} in "
                f"{self.directory}"
            )
        treedef, leaves, descs = cd.describe(state)
        if not leaves:
            raise ValueError("rlbuf.checkpoint.save: the state has no array leaves")
        saveable = [_to_saveable(x, d) for x, d in zip(leaves, descs)]
        arrays = {_name(i): x for i, x in enumerate(saveable)}
        # Checksums of exactly what is written (typed keys as key_data), computed before save
        # returns: the caller may donate or update the state right after an async save.
        descr = [dict(d.to_json(), checksum=c) for d, c in zip(descs, cd.checksums(saveable))]
        structure = cd.structure(treedef)
        meta = {"format": FORMAT, "leaves": descr, "structure": structure, "crc": cd.text_crc([descr, structure])}
        saved = self._mgr.save(
            step,
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(arrays), _META: ocp.args.JsonSave(meta)}),
        )
        if not saved:  # pragma: no cover - orbax declined (e.g. a concurrent save of this step)
            raise RuntimeError(f"Manager.save: orbax did not save step {step} in {self.directory}")

    def metadata(self, step: Optional[int] = None) -> dict:
        """The saved JSON description of ``step`` (default: latest): ``format``, ``leaves``
        (``path``, ``shape``, ``dtype``, ``key_impl``, ``checksum`` per leaf, in flatten order),
        ``structure`` (the tree structure with its static metadata, see
        ``rlbuf._checkpoint_desc.structure``) and ``crc`` (of leaves and structure)."""
        ocp = _ocp()
        step = self._resolve(step)
        path = os.path.join(self.directory, str(step), _META, "metadata")
        try:
            meta = self._mgr.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
        except Exception as e:  # JSONDecodeError, UnicodeDecodeError, FileNotFoundError, orbax's own
            raise _corrupt(self.directory, step, f"its description {path} cannot be read ({type(e).__name__}: "
                                                 f"{str(e)[:300]})") from e
        if not isinstance(meta, dict):
            raise _corrupt(self.directory, step, f"its description {path} is not a JSON object")
        return dict(meta)

    def restore(self, target: Any, step: Optional[int] = None, *, check_treedef: bool = True,
                regroup: bool = False) -> Any:
        """Restore ``step`` (default: the latest) into the structure of ``target``.

        ``target``: a state or an abstract state (``jax.ShapeDtypeStruct`` leaves, e.g. from
        ``jax.eval_shape(rb.init, example)``) of the saved structure. The result has the
        target's treedef (so its static metadata), dtypes and shardings (a target leaf without
        a placement -- an uncommitted array or a ``ShapeDtypeStruct`` without sharding -- gives
        an uncommitted array on the default device, as ``init`` functions do). The checkpoint's
        description is compared with the target's first: any difference raises
        :class:`CheckpointMismatchError` naming the first differing key path
        (``check_treedef=False`` skips only the comparison of static metadata, e.g. to load a
        checkpoint written by an older class definition). Weak types are not restored (rlbuf's
        states hold none: their ``init`` functions make strongly typed arrays).

        Grouped buffer states (``rlbuf.shard``, ``PerWorkerReplayBuffer``: a leading ``[G]``
        axis) saved with another group count than the target's are refused with "saved with G
        groups, restoring into G'"; ``regroup=True`` restores them and redistributes their lanes
        exactly (``rlbuf.regroup``: trajectory ids and lane-major sampler state kept), then
        places them with the target's shardings.
        """
        step = self._resolve(step)
        meta = self.metadata(step)
        changed = _group_changes(meta, target)
        if changed and not regroup:
            p, g, n = changed[0]
            raise _mismatch(
                self.directory, step,
                f"the grouped buffer state at {p or 'the root'} was saved with {g} groups, restoring into {n} "
                "(restore(..., regroup=True) redistributes the lanes exactly, see rlbuf.regroup)",
            )
        if not changed:
            return self._restore(target, step, meta, check_treedef)
        return _regrouped(lambda source: self._restore(source, step, meta, check_treedef), target, changed)

    def _restore(self, target: Any, step: int, meta: dict, check_treedef: bool) -> Any:
        ocp = _ocp()
        treedef, leaves, descs = cd.describe(target)
        _check(meta, treedef, descs, self.directory, step, check_treedef)
        abstract = {_name(i): _restore_spec(x, d) for i, (x, d) in enumerate(zip(leaves, descs))}
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)}))
        except Exception as e:  # tensorstore/orbax errors name leaf_000123, not the key path
            raise _read_error(e, meta, self.directory, step) from e
        restored = out[_STATE]
        # Uncommitted jax leaves go to the device first (as they must anyway), then every jax
        # leaf is checksummed there: one fused pass over the words, where numpy's checksum of
        # the host copy took several (position, multiply, sum) and was ~2x slower.
        stored = [_to_device(restored[_name(i)], x, d) for i, (x, d) in enumerate(zip(leaves, descs))]
        _verify(meta, stored, self.directory, step)
        new = [_from_restored(r, x, d) for r, x, d in zip(stored, leaves, descs)]
        return jax.tree_util.tree_unflatten(treedef, new)

    def _resolve(self, step: Optional[int]) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"rlbuf.checkpoint: no complete checkpoint in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"rlbuf.checkpoint: no complete checkpoint of step {step} in {self.directory} (steps: {steps})"
            )
        return step


def _grouped_nodes(tree: Any) -> list:
    """``(key path, BufferState)`` of the grouped buffer states (``count`` of shape ``[G]``) in ``tree``."""
    from rlbuf.buffers.replay_buffer import BufferState

    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, BufferState))[0]
    return [(jax.tree_util.keystr(p), x) for p, x in flat if isinstance(x, BufferState) and np.ndim(x.count) == 1]


def _group_changes(meta: dict, target: Any) -> list:
    """``(path, saved G, target G')`` of the target's grouped buffer states saved with another
    group count (read from the saved shape of their ``count``)."""
    saved = {s.get("path"): s.get("shape") for s in meta.get("leaves") or [] if isinstance(s, dict)}
    out = []
    for p, node in _grouped_nodes(target):
        shape = saved.get(p + ".count")
        if isinstance(shape, list) and len(shape) == 1 and shape[0] != np.shape(node.count)[0]:
            out.append((p, int(shape[0]), int(np.shape(node.count)[0])))
    return out


def _regrouped(restore_fn, target: Any, changed: list) -> Any:
    """Restore through ``restore_fn`` into a target whose grouped states have the saved group
    counts, then regroup them to the target's and place them with its shardings."""
    from rlbuf.buffers.replay_buffer import BufferState
    from rlbuf.scaling.regrouping import regroup, regroup_abstract

    saved_g = {p: g for p, g, _ in changed}
    paths = iter([jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        target, is_leaf=lambda x: isinstance(x, BufferState))[0]])

    def source(x):
        p = next(paths)
        if p not in saved_g:
            return x
        return jax.eval_shape(lambda s: regroup_abstract(s, saved_g[p], "rlbuf.checkpoint.restore", check=False), x)

    src = jax.tree_util.tree_map(source, target, is_leaf=lambda x: isinstance(x, BufferState))
    restored = restore_fn(src)
    out_nodes = dict(_grouped_nodes(restored))
    want_nodes = dict(_grouped_nodes(target))
    fixed = {}
    for p, _, n in changed:
        node = regroup(out_nodes[p], n)
        fixed[p] = jax.tree_util.tree_map(
            lambda r, t: jax.device_put(r, t.sharding) if _committed(t) else r, node, want_nodes[p])
    paths = iter([jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        restored, is_leaf=lambda x: isinstance(x, BufferState))[0]])
    return jax.tree_util.tree_map(lambda x: fixed.get(next(paths), x), restored,
                                  is_leaf=lambda x: isinstance(x, BufferState))


def save(directory, state: Any) -> None:
    """Save ``state`` (any rlbuf state pytree: buffer, collector, or a tuple/dict of them) to
    ``directory``, replacing the checkpoint there atomically; blocks until it is complete.

    Keeps one checkpoint per directory (a :class:`Manager` with ``max_to_keep=1``; the step
    number counts saves). A save killed midway leaves the previous checkpoint loadable.
    """
    with Manager(directory, max_to_keep=1, async_save=False) as mgr:
        latest = mgr.latest_step()
        mgr.save(0 if latest is None else latest + 1, state)
        mgr.wait_until_finished()


def restore(directory, target: Any, *, check_treedef: bool = True, regroup: bool = False) -> Any:
    """The state saved in ``directory`` (its newest checkpoint), shaped like ``target``.

    ``target``: a state or abstract state (``ShapeDtypeStruct`` leaves) of the saved structure;
    the result has its treedef, dtypes and shardings. A checkpoint of another structure, shape
    or dtype raises :class:`CheckpointMismatchError` naming the first mismatch.
    ``regroup=True``: grouped buffer states saved with another device or worker count are
    regrouped exactly (``rlbuf.regroup``). See :meth:`Manager.restore`.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"rlbuf.checkpoint.restore: no checkpoint directory {os.fspath(directory)}")
    with Manager(directory, _reader=True) as mgr:
        return mgr.restore(target, check_treedef=check_treedef, regroup=regroup)


def metadata(directory, step: Optional[int] = None) -> dict:
    """The JSON description saved with the newest (or ``step``) checkpoint in ``directory``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"rlbuf.checkpoint.metadata: no checkpoint directory {os.fspath(directory)}")
    with Manager(directory, _reader=True) as mgr:
        return mgr.metadata(step)

