"""Fixtures of the dataset tests: a temporary ``MINARI_DATASETS_PATH`` and a small dataset
(see ``minari_helpers``)."""

from __future__ import annotations

import sys

import pytest

# On 3.10 minari is not installed (the extras require it only on >= 3.11): say why the dataset
# tests skip instead of a bare "could not import 'minari'".
if sys.version_info < (3, 11):
    pytest.skip("offline data (rlbuf.datasets, Minari) needs Python >= 3.11: the offline extra installs "
                "minari[hdf5]>=0.5.4 only there", allow_module_level=True)
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
