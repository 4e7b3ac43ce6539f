"""Run every notebook in ``notebooks/`` top to bottom (nbclient, a ``python3`` kernel on this
interpreter), as a user would on Colab; a notebook passes if no cell raises (they contain their
own assertions about shapes and sampled data).

Workloads are kept small: ``RLBUF_NOTEBOOK_TOTAL_FRAMES`` shortens the DQN training of
``02_dqn_cartpole.ipynb``; figures go to matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

#: Seconds a single cell may take (compilation on a loaded 2-core machine included).
CELL_TIMEOUT = 600
#: DQN frames in CI: enough for a few jitted training chunks and evaluations.
CI_TOTAL_FRAMES = "3000"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A ``python3`` kernelspec that starts this very interpreter (not whatever ``python3``
    another Jupyter install registered), and the environment the kernel inherits."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (rlbuf tests)",
        "language": "python",
    }))
    env = {
        "JUPYTER_PATH": str(root),  # searched before the user's and the system's kernelspecs
        "MPLBACKEND": "Agg",
        "RLBUF_NOTEBOOK_TOTAL_FRAMES": CI_TOTAL_FRAMES,
    }
    return env


def test_notebooks_exist():
    names = {p.name for p in PATHS}
    for want in ("01_collectors_and_buffers.ipynb", "02_dqn_cartpole.ipynb",
                 "03_slices_prioritized_nstep.ipynb", "04_multi_device.ipynb"):
        assert want in names, f"notebooks/{want} is missing (found {sorted(names)})"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} cell {i} has outputs: commit notebooks stripped"
            )


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_colab_install_cell_first(path):
    """Colab-ready: the install cell (pip only when rlbuf is not importable) precedes every
    other use of rlbuf; only environment setup (e.g. XLA_FLAGS) may come before it."""
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    first = next(i for i, src in enumerate(code) if "rlbuf" in src)
    src = code[first]
    assert "RLBUF_SOURCE" in src and "except ImportError" in src and "%pip install" in src, (
        f"{path.name}: the first code cell using rlbuf must be the conditional install cell"
    )


def _install_logic(path: pathlib.Path, source: str) -> str:
    """The notebook's install cell as plain Python, as on a machine without rlbuf: the import
    fails, ``RLBUF_SOURCE`` is ``source``, and the cell stops before pip runs (its ``%pip``
    magic and what follows are cut)."""
    cell = next(c.source for c in nbformat.read(path, as_version=4).cells
                if c.cell_type == "code" and "RLBUF_SOURCE" in c.source)
    lines = cell.splitlines()
    lines[lines.index("    import rlbuf")] = "    raise ImportError"
    del lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("%pip install")):]
    code = "\n".join(lines)
    assert 'RLBUF_SOURCE = ""' in code, f"{path.name}: the RLBUF_SOURCE line changed"
    return code.replace('RLBUF_SOURCE = ""', f"RLBUF_SOURCE = {source!r}")


def _requirement(path: pathlib.Path, source: str):
    from packaging.requirements import Requirement

    ns: dict = {}
    exec(_install_logic(path, source), ns)
    req = Requirement(ns["RLBUF_REQUIREMENT"])
    assert req.name == "rlbuf" and "examples" in req.extras, path.name
    return req


@pytest.mark.parametrize("source", ["local checkout", "git+https://github.com/example/rlbuf"])
def test_install_cell_builds_a_valid_requirement(source):
    """The install cell's pip requirement, when rlbuf is missing, is valid for a git URL and for
    a local path (``rlbuf @ /path`` is not: a path must become a ``file://`` URL)."""
    root = NOTEBOOKS.parent
    src = source if source.startswith("git+") else str(root)
    for path in PATHS:
        req = _requirement(path, src)
        assert req.url == (src if src.startswith("git+") else root.resolve().as_uri()), path.name


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    """rlbuf's wheel, built as the notebooks' setup text says (``pip wheel --no-deps .``) from a
    copy of the project (the build writes ``build/`` and ``*.egg-info`` next to the sources)."""
    import shutil
    import subprocess

    root = NOTEBOOKS.parent
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "rlbuf", src / "rlbuf", ignore=shutil.ignore_patterns("__pycache__"))
    out_dir = tmp_path_factory.mktemp("dist")
    # --no-build-isolation: build with this environment's setuptools (no download in CI)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".",
                          "-w", str(out_dir)], cwd=src, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = out_dir.glob("rlbuf-*.whl")
    return wheel


def test_built_wheel_is_installable_rlbuf(built_wheel):
    import zipfile

    names = zipfile.ZipFile(built_wheel).namelist()
    assert "rlbuf/__init__.py" in names and "rlbuf/samplers/slice.py" in names
    meta = zipfile.ZipFile(built_wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: examples" in meta


@pytest.mark.parametrize("where", ["uploaded", "explicit path"])
def test_install_cell_picks_an_uploaded_wheel(built_wheel, where, tmp_path, monkeypatch):
    """On Colab the user uploads the wheel to the working directory (or /content) and runs the
    cell unchanged: it installs that wheel (the newest one if several were uploaded); a wheel's
    path in RLBUF_SOURCE works too."""
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    old = tmp_path / "rlbuf-0.0.1-py3-none-any.whl"
    old.write_bytes(b"")
    os.utime(old, (1, 1))  # an older upload
    wheel = pathlib.Path(shutil.copy(built_wheel, tmp_path / built_wheel.name))
    source = "" if where == "uploaded" else str(wheel)
    for path in PATHS:
        assert _requirement(path, source).url == wheel.resolve().as_uri(), path.name


def test_install_cell_finds_a_checkout_and_says_what_to_do_without_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in PATHS:
        with pytest.raises(RuntimeError, match="pip wheel --no-deps"):
            exec(_install_logic(path, ""), {})
    (tmp_path / "rlbuf").mkdir()
    (tmp_path / "rlbuf" / "pyproject.toml").write_text("")
    for path in PATHS:
        assert _requirement(path, "").url == (tmp_path / "rlbuf").resolve().as_uri(), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path, kernel_env, monkeypatch, tmp_path):
    for k, v in kernel_env.items():
        monkeypatch.setenv(k, v)
    # Notebook 04 sets XLA_FLAGS itself before importing jax; start every kernel with only the
    # suite's compile flags (tests/conftest.py), no forced device count.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("RLBUF_TEST_XLA_FLAGS", ""))
    nb = nbformat.read(path, as_version=4)
    # One extra cell (in memory only) to check that the kernel ran this interpreter.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # no reliance on local files
    )
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert printed == sys.executable, f"the kernel ran {printed!r}, not {sys.executable!r}"
    print(f"{path.name}: {elapsed:.1f}s")
