"""mkdocs hooks (``mkdocs.yml`` -> ``hooks``): pages generated at build time, so that the site
cannot fall behind the code.

- ``api/<concept>.md``: the API reference, one page per concept as users look things up
  (buffers, storages, samplers, writers, collectors, environments, returns, datasets,
  checkpoints, scaling out), each rendering its modules' docstrings with mkdocstrings. Every
  public module of ``rlbuf`` (every ``.py`` file and package whose name does not start with
  ``_``) lands on exactly one page: a new module goes where its package's modules go, or on
  "Other modules" until it is given a concept here. Examples, the demo, the benchmark scripts
  and test helpers are not API and stay out.
- ``notebooks/*.ipynb`` and ``BENCHMARKS.md`` from the repository root, so the pages can link to
  them (the notebooks are served for download).
- Pages listed in ``OPTIONAL`` are dropped from the navigation while they do not exist yet.
- Sphinx roles left in docstrings (``:class:`X```, ``:meth:`~a.b.c```) render as plain code
  (``X``, ``c``) instead of a literal ``:class:`` before it.
"""

from __future__ import annotations

import pathlib
import re

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlbuf"
#: Not API: benchmark scripts, runnable examples, the demo, test helpers.
SKIP = {"rlbuf.bench", "rlbuf.examples", "rlbuf.demo", "rlbuf.envs.ground_truth"}
#: Navigation entries whose page may not exist yet (written elsewhere).
OPTIONAL = {"multi_agent.md"}

#: (title, page, module names or ``prefix.*``); the first match places a module.
CONCEPTS = [
    ("Overview", "index", ["rlbuf"]),
    ("Buffers", "buffers", ["rlbuf.buffers", "rlbuf.buffers.*"]),
    ("Storages", "storages", ["rlbuf.storages", "rlbuf.storages.*"]),
    ("Samplers", "samplers", ["rlbuf.samplers", "rlbuf.samplers.*"]),
    ("Writers", "writers", ["rlbuf.writers", "rlbuf.writers.*"]),
    ("Scaling out", "scaling_out", ["rlbuf.scaling", "rlbuf.scaling.*", "rlbuf.collectors.sharded"]),
    ("Collectors", "collectors", ["rlbuf.collectors", "rlbuf.collectors.*"]),
    ("Environments", "envs", ["rlbuf.envs", "rlbuf.envs.*"]),
    ("Returns", "returns", ["rlbuf.returns"]),
    ("Datasets", "datasets", ["rlbuf.datasets", "rlbuf.datasets.*"]),
    ("Checkpoints", "checkpoints", ["rlbuf.checkpoint"]),
]
OTHER = ("Other modules", "other")


def public_modules() -> list[str]:
    """Dotted names of rlbuf's public API modules, sorted (packages before their modules)."""
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


def _matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith(".*") else name == pattern


def api_pages() -> list[tuple[str, str, list[str]]]:
    """``[(title, page, modules)]`` of the API reference, in navigation order."""
    placed: dict[str, list[str]] = {page: [] for _, page, _ in CONCEPTS}
    other = []
    for name in public_modules():
        page = next((p for _, p, pats in CONCEPTS if any(_matches(name, pat) for pat in pats)), None)
        (placed[page] if page else other).append(name)
    pages = [(title, page, placed[page]) for title, page, _ in CONCEPTS if placed[page]]
    if other:
        pages.append((*OTHER, other))
    return pages


def _page(title: str, page: str, modules: list[str]) -> str:
    if page == "index":
        rows = "\n".join(f"| [{t}]({p}.md) | {', '.join(f'`{m}`' for m in mods)} |"
                         for t, p, mods in api_pages() if p != "index")
        return (f"# API reference\n\nOrganised by concept; every name below is also importable from `rlbuf` "
                f"where the package exports it.\n\n| concept | modules |\n|---|---|\n{rows}\n\n"
                f"## `rlbuf`\n\n::: rlbuf\n    options:\n      members: false\n")
    parts = [f"# {title}\n"]
    for name in modules:
        parts.append(f"## `{name}`\n\n::: {name}\n    options:\n      heading_level: 3\n{_members_option(name)}")
    return "\n".join(parts)


def _members_option(name: str) -> str:
    """mkdocstrings' ``members`` for a package: the names it re-exports from its public modules
    are documented with those modules on the same page, so the package lists only what it
    defines itself or takes from private modules (``rlbuf.envs.SuiteEnv``); re-exports of
    modules left out of the reference (test helpers) are not listed either."""
    import ast

    path = ROOT / pathlib.Path(*name.split("."))
    if not path.is_dir():
        return ""
    own = []
    for node in ast.parse((path / "__init__.py").read_text()).body:
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if any(p.startswith("_") for p in module.split(".")):
                own += [a.asname or a.name for a in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.append(node.name)
    return f"      members: [{', '.join(own)}]\n" if own else "      members: false\n"


def on_config(config):
    """Fill the nav's "API reference" section (one entry per concept page) and drop optional
    pages that do not exist yet."""
    docs = pathlib.Path(config["docs_dir"])

    def prune(nav):
        out = []
        for entry in nav:
            if isinstance(entry, dict):
                (title, value), = entry.items()
                if isinstance(value, str) and value in OPTIONAL and not (docs / value).is_file():
                    continue
                if isinstance(value, list):
                    value = prune(value)
                entry = {title: value}
            out.append(entry)
        return out

    nav = prune(config["nav"] or [])
    pages = [{title: f"api/{page}.md"} for title, page, _ in api_pages()]
    config["nav"] = [{"API reference": pages} if isinstance(e, dict) and "API reference" in e else e for e in nav]
    return config


_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc|py:\w+):<code>(~?)([^<]*)</code>")


def on_page_content(html, page, config, files):
    """``:class:<code>X</code>`` (a Sphinx role Markdown kept) -> ``<code>X</code>``; a ``~``
    prefix keeps the last dotted component, as Sphinx does."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_files(files, config):
    for title, page, modules in api_pages():
        files.append(File.generated(config, f"api/{page}.md", content=_page(title, page, modules)))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File.generated(config, f"notebooks/{nb.name}", abs_src_path=str(nb)))
    files.append(File.generated(config, "BENCHMARKS.md", abs_src_path=str(ROOT / "BENCHMARKS.md")))
    return files
