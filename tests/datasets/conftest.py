"""Fixtures of the dataset tests: a temporary ``MINARI_DATASETS_PATH`` and a small dataset
(see ``minari_helpers``)."""

from __future__ import annotations

import pytest

pytest.importorskip("minari")
pytest.importorskip("h5py")

from minari_helpers import collect  # noqa: E402


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """Box observations, ~120 steps; created once per module in its own root."""
    root = tmp_path_factory.mktemp("minari_small")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        ds = collect("gt/box-v0", 120, seed=1)
    return ds, root
