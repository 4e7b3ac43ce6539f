"""The offline-to-online example (``python -m rlbuf.examples.offline``) on a tiny budget: the
dataset is generated locally in a temporary Minari root (removed afterwards, the caller's
``MINARI_DATASETS_PATH`` untouched), the CQL phase learns from it, and the online phase samples
half of every batch from each buffer."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if sys.version_info < (3, 11):
    pytest.skip("offline data (rlbuf.datasets, Minari) needs Python >= 3.11: the offline extra installs "
                "minari[hdf5]>=0.5.4 only there", allow_module_level=True)
pytest.importorskip("minari")
pytest.importorskip("h5py")
pytest.importorskip("optax")

from rlbuf.examples import offline  # noqa: E402


@pytest.mark.slow
def test_tiny_budget_runs_and_mixes_half_half(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "mine"))
    out = offline.main(["--dataset-steps", "1500", "--offline-updates", "300", "--online-frames", "256",
                        "--log-every", "300", "--eval-episodes", "4", "--hidden", "64", "--quiet"])
    assert os.environ["MINARI_DATASETS_PATH"] == str(tmp_path / "mine")
    assert not (tmp_path / "mine").exists()  # the example wrote only to its own temporary root
    assert out["dataset_transitions"] == 1500
    assert out["offline_fraction"] == pytest.approx(0.5)
    for k in ("dataset_return", "offline_return", "final_return"):
        assert np.isfinite(out[k]) and 8 <= out[k] <= 500, (k, out[k])
    # Even 300 CQL updates on the heuristic's data beat a random policy (~22) by far.
    assert out["offline_return"] > 60


def test_keep_dataset_writes_a_loadable_dataset(tmp_path):
    minari = pytest.importorskip("minari")
    with offline.minari_root(str(tmp_path)):
        ds = offline.make_dataset("cartpole/heuristic-v0", 300, 0.5, seed=1)
        again = minari.load_dataset("cartpole/heuristic-v0")
    assert again.total_steps == ds.total_steps == 300
    assert (tmp_path / "cartpole" / "heuristic-v0" / "data" / "metadata.json").exists()
