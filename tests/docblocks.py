"""Running the ```python blocks of a Markdown page (the README's Tour, the docs pages) as a user
would after installing rlbuf with some extras.

- ``python_blocks(text)``: every ```python fence with the line number of its first code line.
- ``needed_extra(src)``: a block that needs an optional extra says so in its first line, e.g.
  ``# needs rlbuf[envs]: pip install -e ".[envs]"``; ``None`` when it needs none.
- ``run_blocks(...)``: runs the blocks in order in one namespace in a fresh interpreter (a
  subprocess), with an import blocker that makes every installed distribution outside
  rlbuf's core dependencies, the given extras and their dependencies unimportable, as in a
  venv where only ``pip install -e ".[examples]"`` ran. A block that declares another extra is
  run with the blocker lifted (and skipped when that extra is not installed).

Not a test module: ``tests/test_readme.py`` and ``tests/test_docs.py`` use it.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import json
import os
import pathlib
import re
import subprocess
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
NEEDS = re.compile(r"^#\s*needs\b.*?rlbuf\[(\w+)\]")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``[(line of the block's first code line - 1, source)]`` for every ```python fence."""
    return [(text.count("\n", 0, m.start(1)), m.group(1)) for m in FENCE.finditer(text)]


def needed_extra(src: str):
    """The extra a block declares in its first line (``# needs rlbuf[envs] ...``), or None."""
    m = NEEDS.match(src.lstrip("\n").split("\n", 1)[0])
    return m.group(1) if m else None


@functools.lru_cache(maxsize=None)
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _reqs(extra: str | None) -> list[Requirement]:
    """The requirements of rlbuf's core (``extra=None``) or of one extra, markers applied;
    ``rlbuf[x]`` inside an extra expands to extra ``x``."""
    raw = _project()["dependencies"] if extra is None else _project()["optional-dependencies"][extra]
    env = dict(default_environment(), extra="")
    out = []
    for r in map(Requirement, raw):
        if r.marker is not None and not r.marker.evaluate(env):
            continue
        if canonicalize_name(r.name) == "rlbuf":
            for x in sorted(r.extras):
                out += _reqs(x)
        else:
            out.append(r)
    return out


def extra_installed(extra: str) -> bool:
    """Whether every distribution the extra asks for is installed here."""
    try:
        for r in _reqs(extra):
            md.distribution(r.name)
    except md.PackageNotFoundError:
        return False
    return True


def _closure(names: list[str]) -> set[str]:
    """Canonical names of the installed distributions ``names`` and everything they require
    (their own extras not taken)."""
    env = dict(default_environment(), extra="")
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for spec in dist.requires or []:
            r = Requirement(spec)
            if r.marker is None or r.marker.evaluate(env):
                todo.append(r.name)
    return seen


def allowed_distributions(extras: tuple[str, ...] = ("examples",)) -> set[str]:
    """rlbuf's core dependencies and ``extras``, with all they require."""
    names = [r.name for r in _reqs(None)]
    for x in extras:
        names += [r.name for r in _reqs(x)]
    return _closure(names)


def blocked_modules(extras: tuple[str, ...] = ("examples",)) -> list[str]:
    """Top-level modules of installed distributions a venv with only ``extras`` would lack."""
    allowed = allowed_distributions(extras)
    blocked = []
    for mod, dists in md.packages_distributions().items():
        if mod == "rlbuf" or mod.startswith("_") and mod not in ("_pytest",):
            continue
        if not any(canonicalize_name(d) in allowed for d in dists):
            blocked.append(mod)
    return sorted(blocked)


def imported_modules(src: str) -> set[str]:
    """Top-level module names a block imports (``import a.b`` -> ``a``)."""
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


RUNNER = r"""
import importlib.abc, json, sys, time
blocks, filename, blocked = json.loads(sys.argv[1])

class Blocker(importlib.abc.MetaPathFinder):
    # As in a venv where these distributions are not installed.
    active = True
    names = frozenset(blocked)

    def find_spec(self, name, path=None, target=None):
        if self.active and name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed with rlbuf's extras here)",
                                      name=name)
        return None

blocker = Blocker()
sys.meta_path.insert(0, blocker)
ns = {"__name__": "__docs__"}
for line, src, extra, run in blocks:
    if not run:
        print(f"--- {filename} block at line {line}: skipped ({extra} extra not installed)", flush=True)
        continue
    print(f"--- {filename} block at line {line}" + (f" (with the {extra} extra)" if extra else ""), flush=True)
    blocker.active = extra is None
    t0 = time.process_time()
    exec(compile("\n" * line + src, filename, "exec"), ns)
    blocker.active = True
    print(f"    {time.process_time() - t0:.1f}s CPU", flush=True)
print("--- all blocks ran", flush=True)
"""


def run_blocks(path: pathlib.Path, cwd, *, extras: tuple[str, ...] = ("examples",), timeout: int = 900):
    """Runs the python blocks of ``path`` in order in one fresh interpreter (cwd ``cwd``),
    with only rlbuf's core dependencies and ``extras`` importable, except in blocks that
    declare another extra. Returns the ``CompletedProcess``."""
    text = pathlib.Path(path).read_text()
    blocks = []
    for line, src in python_blocks(text):
        extra = needed_extra(src)
        if extra in extras:
            extra = None
        blocks.append((line, src, extra, extra is None or extra_installed(extra)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    arg = json.dumps([blocks, pathlib.Path(path).name, blocked_modules(extras)])
    return subprocess.run([sys.executable, "-c", RUNNER, arg], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
