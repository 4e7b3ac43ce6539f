"""The README runs as written after the quick start's line 1 (``pip install -e ".[examples]"``):
every ```python block, in order, in one fresh interpreter (a subprocess in a temporary
directory, so files the Tour writes, e.g. checkpoints, land there and the blocks cannot change
this process's JAX configuration), with every installed distribution that rlbuf's core
dependencies and the ``examples`` extra do not bring made unimportable (``tests/docblocks.py``).
A block that needs another extra says so in its first line (``# needs rlbuf[envs] ...``) and
runs with it (skipped where that extra is not installed).

Generic on purpose: a block added to the README by anyone is run too. A failure's traceback
points at the README line (each block is compiled with its README line numbers).
"""

from __future__ import annotations

import pathlib

from docblocks import allowed_distributions, imported_modules, needed_extra, python_blocks, run_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_block_extraction_keeps_line_numbers():
    text = "# t\n\n```python\nx = 1\n```\n\ntext\n```bash\nls\n```\n```python\ny = x\n```\n"
    blocks = python_blocks(text)
    assert [src for _, src in blocks] == ["x = 1\n", "y = x\n"]
    assert [text.splitlines()[line] for line, _ in blocks] == ["x = 1", "y = x"]


def test_needed_extra_is_read_from_the_first_line():
    assert needed_extra('# needs rlbuf[envs]: pip install -e ".[envs]"\nimport navix\n') == "envs"
    assert needed_extra("import jax\n# needs rlbuf[envs]\n") is None
    assert needed_extra("x = 1\n") is None


def test_tour_imports_only_what_line_1_installs():
    """Static half of "runs after line 1": a Tour block that declares no extra imports only
    rlbuf, the standard library and distributions that rlbuf's core dependencies and the
    ``examples`` extra install (with their own dependencies)."""
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    allowed = allowed_distributions(("examples",))
    dists = md.packages_distributions()
    for line, src in python_blocks(README.read_text()):
        if needed_extra(src) not in (None, "examples"):
            continue
        for mod in imported_modules(src) - {"rlbuf"}:
            if mod in dists:  # else: the standard library
                assert any(canonicalize_name(d) in allowed for d in dists[mod]), (
                    f"README block at line {line + 1} imports {mod!r}, which `pip install -e \".[examples]\"` does "
                    f"not install: declare the extra in the block's first line (# needs rlbuf[<extra>] ...)"
                )


def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5, "the README's Tour lost its Python blocks"
    out = run_blocks(README, tmp_path, extras=("examples",))
    assert out.returncode == 0 and "--- all blocks ran" in out.stdout, (
        out.stdout[-2000:] + "\n" + out.stderr[-6000:]
    )
