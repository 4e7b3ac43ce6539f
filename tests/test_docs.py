"""The documentation site (``mkdocs.yml``): it builds in strict mode, so a broken reference
(a page, a link, an API object that mkdocstrings cannot find) fails the suite; every public
module has its API page; the notebooks and the README's Tour are on it."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("rlbuf_docs_hooks", ROOT / "docs" / "_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_public_module_gets_an_api_page():
    names = _hooks().public_modules()
    for want in ("rlbuf", "rlbuf.replay_buffer", "rlbuf.storage", "rlbuf.samplers.slice", "rlbuf.collectors",
                 "rlbuf.checkpoint", "rlbuf.sharding"):
        assert want in names
    assert not [n for n in names if any(p.startswith("_") for p in n.split("."))]
    assert not [n for n in names if n.startswith("rlbuf.bench")]


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rlbuf.ReplayBuffer" in (site / "index.html").read_text()  # the README's Tour
    api = (site / "api" / "rlbuf.replay_buffer" / "index.html").read_text()
    assert "ReplayBuffer" in api and "sample" in api  # rendered from the docstrings
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert (site / "notebooks" / nb.name).is_file()
