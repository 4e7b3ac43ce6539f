"""The documentation site (``mkdocs.yml``): it builds in strict mode, so a broken reference
(a page, a link, an API object that mkdocstrings cannot find) fails the suite; the API
reference is organised by concept and every public module is on it (examples, the demo and
test helpers are not); docstrings render as parameter tables, never a literal reST ``::`` or
Sphinx role;
and every ```python block of every docs page runs, page by page, in order, as a user would
run it after ``pip install -e ".[examples]"`` (``tests/docblocks.py``; a block that needs
another extra says so in its first line and is skipped only where that extra is not
installed). Blocks fenced as ```py are shown, not run (TorchRL's and flashbax's code on the
migration pages)."""

from __future__ import annotations

import html
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
from docblocks import needed_extra, python_blocks, run_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p.read_text()))


def _hooks():
    spec = importlib.util.spec_from_file_location("rlbuf_docs_hooks", DOCS / "_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_public_module_is_in_the_api_reference_once():
    hooks = _hooks()
    names = hooks.public_modules()
    for want in ("rlbuf", "rlbuf.buffers.replay_buffer", "rlbuf.storages", "rlbuf.samplers.slice", "rlbuf.collectors",
                 "rlbuf.checkpoint", "rlbuf.scaling.sharding"):
        assert want in names
    assert not [n for n in names if any(p.startswith("_") for p in n.split("."))]
    assert not [n for n in names if n.startswith(("rlbuf.bench", "rlbuf.examples")) or n == "rlbuf.demo"]
    pages = hooks.api_pages()
    placed = [m for _, _, mods in pages for m in mods]
    assert sorted(placed) == sorted(names), "a public module is missing from the API reference, or twice in it"
    by_module = {m: title for title, _, mods in pages for m in mods}
    assert by_module["rlbuf.buffers.replay_buffer"] == "Buffers"
    assert by_module["rlbuf.samplers.slice"] == "Samplers"
    assert by_module["rlbuf.collectors.host"] == "Collectors"
    assert by_module["rlbuf.checkpoint"] == "Checkpoints"
    assert by_module["rlbuf.scaling.sharding"] == "Scaling out"
    assert by_module["rlbuf.buffers.stages"] == "Buffers" and by_module["rlbuf.storages.compact"] == "Storages"
    # The old module paths (aliases of the new modules, rlbuf._moved) are not documented again.
    from rlbuf import _moved

    assert not set(_moved.MOVED) & set(placed)


def test_docs_pages_with_code_exist():
    names = {p.name for p in PAGES}
    for want in ("from_torchrl.md", "from_flashbax.md", "recurrent.md", "samplers.md", "envs_jax.md",
                 "envs_host.md"):
        assert want in names, f"docs/{want} is missing or has no python blocks"


def test_docs_speak_to_users_not_to_the_tracker():
    """A reader has no tracker: no "issue 13" in the docs, the README or BENCHMARKS.md."""
    for path in [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "BENCHMARKS.md"]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"\bissues?[ -]\d+|\(#\d+\)", line, re.I), f"{path.name}:{i}: {line.strip()[:100]}"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_docs_page_blocks_run_in_order(page, tmp_path):
    out = run_blocks(page, tmp_path, extras=("examples",))
    assert out.returncode == 0 and "--- all blocks ran" in out.stdout, (
        out.stdout[-2000:] + "\n" + out.stderr[-6000:]
    )
    for _, src in python_blocks(page.read_text()):
        extra = needed_extra(src)
        ran_or_skipped = (f"({extra} extra not installed)", f"with the {extra} extra")
        assert extra is None or any(s in out.stdout for s in ran_or_skipped)


def _text(path: pathlib.Path) -> str:
    """A built page's visible text (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rlbuf.ReplayBuffer" in (site / "index.html").read_text()  # the README's Tour
    for page in ("from_torchrl", "from_flashbax", "recurrent", "samplers", "envs_jax", "envs_host"):
        assert (site / page / "index.html").is_file(), page
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert (site / "notebooks" / nb.name).is_file()
    # The API reference, by concept: ReplayBuffer's arguments render as a parameters table.
    buffers = (site / "api" / "buffers" / "index.html").read_text()
    assert "ReplayBuffer" in buffers and "sample" in buffers
    start = buffers.index('id="rlbuf.buffers.replay_buffer.ReplayBuffer"')
    rb_section = buffers[start:buffers.index('id="rlbuf.buffers.replay_buffer.ReplayBuffer.init"')]
    assert "<table" in rb_section and "Parameters" in _text_of(rb_section)
    for name in ("storage", "sampler", "writer", "batch_size", "transform", "keys", "frame_stack"):
        assert f"<code>{name}</code>" in rb_section, name
    assert "Args (keyword-only)" not in _text_of(rb_section)
    # No reST left over anywhere in the API pages: a literal "::" or ".. code-block::".
    for page in (site / "api").rglob("index.html"):
        text = _text(page)
        assert ".. code-block" not in text, page
        assert not re.search(r":(class|func|meth|attr|mod|exc):", text), page  # Sphinx roles (docs/_hooks.py)
        bad = re.findall(r".{0,60}[\w)`\]]::(?=\s).{0,20}", text)
        assert not bad, f"{page.parent.name}: {bad[:3]}"
    assert not (site / "api" / "rlbuf.examples").exists()
    # Packages list only their own names: nothing twice, no re-exported test helper.
    envs = (site / "api" / "envs" / "index.html").read_text()
    assert 'id="rlbuf.envs.SuiteEnv"' in envs and 'id="rlbuf.envs.brax_env.BraxEnv"' in envs
    assert 'id="rlbuf.envs.BraxEnv"' not in envs and "GroundTruthEnv" not in envs


def _text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))
