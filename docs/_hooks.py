"""mkdocs hooks (``mkdocs.yml`` -> ``hooks``): pages generated at build time, so that the site
cannot fall behind the code.

- ``api/<module>.md``: one page per public module of ``rlbuf`` (every ``.py`` file and package
  whose name does not start with ``_``), rendered by mkdocstrings from its docstrings; a new
  module gets its page without editing anything here.
- ``notebooks/*.ipynb`` and ``BENCHMARKS.md`` from the repository root, so the pages can link to
  them (the notebooks are served for download).
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlbuf"
#: Not API: benchmark scripts.
SKIP = {"rlbuf.bench"}


def public_modules() -> list[str]:
    """Dotted names of rlbuf's public modules, sorted (packages before their modules)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        name = ".".join(parts)
        if any(name == s or name.startswith(s + ".") for s in SKIP):
            continue
        names.append(name)
    return sorted(names)


def on_config(config):
    """Fill the nav's "API reference" section with one entry per public module."""
    pages = [{name: f"api/{name}.md"} for name in public_modules()]
    for i, entry in enumerate(config["nav"] or []):
        if isinstance(entry, dict) and "API reference" in entry:
            config["nav"][i] = {"API reference": pages}
    return config


def on_files(files, config):
    for name in public_modules():
        content = f"# `{name}`\n\n::: {name}\n"
        files.append(File.generated(config, f"api/{name}.md", content=content))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File.generated(config, f"notebooks/{nb.name}", abs_src_path=str(nb)))
    files.append(File.generated(config, "BENCHMARKS.md", abs_src_path=str(ROOT / "BENCHMARKS.md")))
    return files
