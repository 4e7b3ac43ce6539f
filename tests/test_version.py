"""The version says which release a user has: package metadata, ``rlbuf.__version__`` and the
newest CHANGELOG entry agree, and the type-hint marker ships with the package."""

import os
import re

import rlbuf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_matches_pyproject_and_changelog():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        newest = re.search(r"^## (\S+)", f.read(), re.M).group(1)
    assert rlbuf.__version__ == pyproject == newest


def test_py_typed_is_shipped():
    assert os.path.exists(os.path.join(os.path.dirname(rlbuf.__file__), "py.typed"))
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'rlbuf = ["py.typed"]' in f.read()
