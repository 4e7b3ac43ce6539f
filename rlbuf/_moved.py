"""Where the modules of earlier releases live now: one table (old dotted name -> new) and the
import hook that keeps every old path working.

Release 0.3.0 grouped the flat top level into packages (:mod:`rlbuf.buffers`,
:mod:`rlbuf.scaling`). Every old path still works and gives the module at its new home, the
*same* module object (never a copy: one class per name, so ``isinstance`` and jit caches are
shared): ``import rlbuf.replay_buffer``, ``from rlbuf.sharding import shard``,
``importlib.import_module("rlbuf.storage")``, and ``rlbuf.per_worker`` (attribute access,
``rlbuf.__getattr__`` reads this table). Checkpoints of earlier releases name their classes by
the old paths; ``rlbuf._checkpoint_desc`` maps those names through this table too.

Why an import hook and not one re-exporting file per old module: a re-export is a second module
object with its own ``__name__`` (documented twice, pickled under two names, drifting apart
from the real one); the hook makes the old name an alias of the real module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Optional, Sequence

#: Old module path -> its module now. A name under an old path maps the same way
#: (``rlbuf.storage.x`` -> ``rlbuf.storages.x``), so an old alias of a package never loads a
#: second copy of one of its modules.
MOVED = {
    # the buffer and what runs around its plug-ins: rlbuf.buffers
    "rlbuf.replay_buffer": "rlbuf.buffers.replay_buffer",
    "rlbuf.buffer": "rlbuf.buffers.protocols",
    "rlbuf.stages": "rlbuf.buffers.stages",
    "rlbuf.frame_stack": "rlbuf.buffers.frame_stack",
    "rlbuf.transforms": "rlbuf.buffers.transforms",
    "rlbuf.ensemble": "rlbuf.buffers.ensemble",
    # the first and second release's storage paths (re-exporting files until 0.3.0)
    "rlbuf.storage": "rlbuf.storages",
    "rlbuf.compact": "rlbuf.storages.compact",
    # lane groups over devices and workers, multi-host: rlbuf.scaling
    "rlbuf.sharding": "rlbuf.scaling.sharding",
    "rlbuf.per_worker": "rlbuf.scaling.per_worker",
    "rlbuf.regrouping": "rlbuf.scaling.regrouping",
    "rlbuf.distributed": "rlbuf.scaling.distributed",
    "rlbuf._groups": "rlbuf.scaling._groups",
}

# Longest first: the most specific old path wins.
_OLD = sorted(MOVED, key=len, reverse=True)


def split_old(name: str) -> Optional[tuple[str, str]]:
    """``(old module path, rest)`` when ``name`` is an old module path or a dotted name under
    one (``"rlbuf.storage.Layout"`` -> ``("rlbuf.storage", "Layout")``; ``rest`` is ``""`` for the
    module itself), else ``None``."""
    for old in _OLD:
        if name == old:
            return old, ""
        if name.startswith(old + "."):
            return old, name[len(old) + 1:]
    return None


def new_name(name: str) -> Optional[str]:
    """The current dotted name of an old module path (or of a name under one), else ``None``."""
    found = split_old(name)
    if found is None:
        return None
    old, rest = found
    return MOVED[old] + ("." + rest if rest else "")


class _Alias(importlib.abc.Loader):
    """Loads an old module path as the module at its new path (imported if it is not yet)."""

    def __init__(self, target: str):
        self.target = target
        self.spec: Optional[importlib.machinery.ModuleSpec] = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system set module.__spec__ to the alias's spec: give the module its own back
        # (reload, pickle and inspect read it); nothing else of the module was touched.
        module.__spec__ = self.spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once): ahead of the path finder, which would
    otherwise load a module under an old package alias (``rlbuf.storage.base``) a second time."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
