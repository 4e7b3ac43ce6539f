"""The README runs as written: every ```python block, in order, in one fresh interpreter (a
subprocess in a temporary directory, so files the Tour writes, e.g. checkpoints, land there and
the blocks cannot change this process's JAX configuration).

Generic on purpose: a block added to the README by anyone is run too. A failure's traceback
points at the README line (each block is compiled with its README line numbers).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)

RUNNER = r"""
import json, sys
blocks = json.loads(sys.argv[1])
ns = {"__name__": "__readme__"}
for line, src in blocks:
    print(f"--- README.md block at line {line}", flush=True)
    exec(compile("\n" * line + src, "README.md", "exec"), ns)
print("--- all blocks ran", flush=True)
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``[(line of the block's first code line - 1, source)]`` for every ```python fence."""
    return [(text.count("\n", 0, m.start(1)), m.group(1)) for m in FENCE.finditer(text)]


def test_block_extraction_keeps_line_numbers():
    text = "# t\n\n```python\nx = 1\n```\n\ntext\n```bash\nls\n```\n```python\ny = x\n```\n"
    blocks = python_blocks(text)
    assert [src for _, src in blocks] == ["x = 1\n", "y = x\n"]
    assert [text.splitlines()[line] for line, _ in blocks] == ["x = 1", "y = x"]


def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5, "the README's Tour lost its Python blocks"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(blocks)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "--- all blocks ran" in out.stdout, (
        out.stdout[-2000:] + "\n" + out.stderr[-6000:]
    )
