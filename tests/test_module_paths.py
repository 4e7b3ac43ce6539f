"""The module paths of earlier releases (``rlbuf._moved``): every old path imports, in every
form, as the *same* module object as its new home (same classes, never a second copy), in a
fresh interpreter where that old path was never imported before; the API reference lists only
the new modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rlbuf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The old paths (release 0.2.0's flat modules) -> (new module, names users import from the old path).
#: Written out here, not read from rlbuf._moved, so a wrong table fails this test.
OLD = {
    "rlbuf.replay_buffer": ("rlbuf.buffers.replay_buffer", ["ReplayBuffer", "BufferState", "stored_count"]),
    "rlbuf.buffer": ("rlbuf.buffers.protocols", ["Buffer", "SplittableBuffer"]),
    "rlbuf.stages": ("rlbuf.buffers.stages", ["SampleContext", "Stage", "chain"]),
    "rlbuf.frame_stack": ("rlbuf.buffers.frame_stack", ["FrameStack"]),
    "rlbuf.transforms": ("rlbuf.buffers.transforms", ["MultiStep", "MultiStepTransform"]),
    "rlbuf.ensemble": ("rlbuf.buffers.ensemble", ["EnsembleState", "ReplayBufferEnsemble"]),
    "rlbuf.storage": ("rlbuf.storages", ["CompactTensorStorage", "Layout", "LazyTensorStorage", "Storage"]),
    "rlbuf.compact": ("rlbuf.storages.compact",
                      ["CompactState", "CompactTensorStorage", "compacted_keys", "nbytes", "table_rows"]),
    "rlbuf.sharding": ("rlbuf.scaling.sharding", ["shard", "ShardedReplayBuffer", "PerWorkerReplayBuffer"]),
    "rlbuf.per_worker": ("rlbuf.scaling.per_worker", ["PerWorkerReplayBuffer"]),
    "rlbuf.regrouping": ("rlbuf.scaling.regrouping", ["regroup"]),
    "rlbuf.distributed": ("rlbuf.scaling.distributed",
                          ["initialize", "data_mesh", "global_batch", "replicate", "local_part"]),
}

#: How a user reaches a module by its old path ``{old}`` (``{short}``: its last component,
#: ``{names}``: what it exports); each form runs in its own interpreter, so every old path is
#: reached for the first time by that form.
FORMS = {
    "import": "import {old}\nmod = {old}",
    "import_as": "import {old} as mod",
    "from_import": "from {old} import {names}\nmod = sys.modules[{old!r}]",
    "import_module": "mod = importlib.import_module({old!r})",
    "attribute": "import rlbuf\nmod = rlbuf.{short}",
    "from_rlbuf": "from rlbuf import {short} as mod",
}

_CHECK = """
import importlib, json, sys
out = {{}}
for old, (new, names) in json.loads({table!r}).items():
    short = old.rsplit(".", 1)[1]
    ns = {{"importlib": importlib, "sys": sys}}
    exec({form!r}.format(old=old, short=short, names=", ".join(names)), ns)
    mod = ns["mod"]
    real = importlib.import_module(new)
    import rlbuf
    out[old] = {{
        "same": mod is real and sys.modules[old] is real and getattr(rlbuf, short) is real,
        "name": real.__name__, "spec": real.__spec__.name,
        "names": all(ns.get(n, getattr(mod, n)) is getattr(real, n) for n in names),
    }}
# one module object per file: no old path loaded a second copy
mods = {{id(m): m for k, m in list(sys.modules.items()) if k.startswith("rlbuf")}}
files = [f for f in (getattr(m, "__file__", None) for m in mods.values()) if f]
out["copies"] = sorted({{f for f in files if files.count(f) > 1}})
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("form", sorted(FORMS))
def test_old_paths_import_as_the_new_modules(form):
    script = _CHECK.format(table=json.dumps(OLD), form=FORMS[form])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert res.pop("copies") == []
    for old, (new, _) in OLD.items():
        # The module keeps its own name and spec: the alias never renames it.
        assert res[old] == {"same": True, "name": new, "spec": new, "names": True}, old


def test_classes_keep_their_new_module_paths():
    """Classes are named where they are defined (pickle, checkpoints and the docs read it):
    the storages' old ``__module__`` overrides are gone."""
    from rlbuf.buffers.ensemble import EnsembleState
    from rlbuf.storages.compact import CompactState

    assert rlbuf.BufferState.__module__ == "rlbuf.buffers.replay_buffer"
    assert EnsembleState.__module__ == "rlbuf.buffers.ensemble"
    assert rlbuf.Layout.__module__ == "rlbuf.storages.base"
    assert CompactState.__module__ == "rlbuf.storages.compact"
    assert rlbuf.PerWorkerReplayBuffer.__module__ == "rlbuf.scaling.per_worker"


def test_names_under_an_old_path_map_the_same_way():
    """A module under an old package alias is the real one (``rlbuf.storage.base`` is
    ``rlbuf.storages.base``, not a second copy of it); names that never existed still fail."""
    import importlib

    import rlbuf.storages.base

    assert importlib.import_module("rlbuf.storage.base") is rlbuf.storages.base
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("rlbuf.replay_buffers")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("rlbuf.sharding.nope")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rlbuf.nope
