"""``from_minari`` / ``iter_minari`` / ``fill_buffer``: every transition and every trajectory
boundary against the dataset's own episode iterator (``MinariDataset.iterate_episodes``), on
datasets whose episodes end by termination and by truncation; Box and Dict observations;
chunked reads; a filled buffer whose slices never cross episodes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from minari_helpers import collect

import rlbuf
from rlbuf import datasets

minari = pytest.importorskip("minari")
TRAJ = ("collector", "traj_ids")


def reference(ds) -> dict:
    """The expected ``[N]`` batch, built from Minari's own iterator with a plain loop."""
    rows = []
    for ep in ds.iterate_episodes():
        for t in range(len(ep)):
            obs = jax.tree.map(lambda o: o[t], ep.observations)
            nxt = jax.tree.map(lambda o: o[t + 1], ep.observations)
            term, trunc = bool(ep.terminations[t]), bool(ep.truncations[t])
            rows.append({
                "observation": obs, "action": ep.actions[t],
                "next": {"observation": nxt, "reward": ep.rewards[t], "terminated": term, "truncated": trunc,
                         "done": term or trunc},
                "collector": {"traj_ids": ep.id},
            })
    return jax.tree.map(lambda *xs: np.stack(xs), *rows)


def assert_same(data, ref):
    assert jax.tree.structure(data) == jax.tree.structure(ref)
    for path, x in jax.tree_util.tree_flatten_with_path(data)[0]:
        y = jax.tree_util.tree_flatten_with_path(ref)[0]
        y = dict((jax.tree_util.keystr(p), v) for p, v in y)[jax.tree_util.keystr(path)]
        assert x.shape == y.shape, path
        np.testing.assert_array_equal(x, y.astype(x.dtype), err_msg=jax.tree_util.keystr(path))


def check_boundaries(data):
    """Episode ends: done exactly at the last step of each traj id; ``next`` observation equals the
    following observation inside an episode (ground truth: step + 1 in the same episode)."""
    ids, done = data["collector"]["traj_ids"], data["next"]["done"]
    change = np.append(ids[1:] != ids[:-1], True)
    np.testing.assert_array_equal(done, change)
    pick = (lambda o: o["where"]) if isinstance(data["observation"], dict) else (lambda o: o)
    where, nwhere = pick(data["observation"]), pick(data["next"]["observation"])
    np.testing.assert_array_equal(nwhere[:, 1], where[:, 1] + 1)
    np.testing.assert_array_equal(nwhere[:, 0], where[:, 0])
    np.testing.assert_array_equal(where[~np.insert(change[:-1], 0, True), 1] > 0, True)  # mid-episode steps
    np.testing.assert_array_equal(where[np.insert(change[:-1], 0, True), 1], 0)  # every episode starts at reset


def test_box_dataset_matches_episode_iterator(small_dataset):
    ds, root = small_dataset
    data = datasets.from_minari(ds)
    ref = reference(ds)
    assert_same(data, ref)
    check_boundaries(data)
    # Both endings are present, and the truncations include the TimeLimit(8) ones.
    assert data["next"]["terminated"].any() and data["next"]["truncated"].any()
    np.testing.assert_array_equal(np.unique(data["collector"]["traj_ids"]), np.arange(ds.total_episodes))
    assert data["observation"].dtype == np.float32 and data["action"].dtype == np.int32
    assert data["next"]["reward"].dtype == np.float32


def test_dict_observations(minari_root):
    ds = collect("gt/dict-v0", 60, dict_obs=True, seed=2)
    data = datasets.from_minari("gt/dict-v0")  # by id, in the local root
    assert set(data["observation"]) == {"where", "length"}
    assert data["next"]["observation"]["length"].shape == (ds.total_steps, 1)
    assert_same(data, reference(ds))
    check_boundaries(data)


def test_sources_and_errors(small_dataset, tmp_path):
    ds, root = small_dataset
    by_dir = datasets.from_minari(root / "gt" / "box-v0")  # dataset folder
    by_data = datasets.from_minari(root / "gt" / "box-v0" / "data")  # its data folder
    for a, b in zip(jax.tree.leaves(by_dir), jax.tree.leaves(by_data)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no Minari dataset"):
        datasets.from_minari(tmp_path)
    with pytest.raises(TypeError, match="MinariDataset"):
        datasets.from_minari(3)
    with pytest.raises(ValueError, match="not in the dataset"):
        datasets.from_minari(ds, episode_indices=[0, 10_000])
    with pytest.raises(ValueError, match="chunk_size"):
        next(datasets.iter_minari(ds, chunk_size=0))


@pytest.mark.parametrize("chunk", [1, 7, 50, 10_000])
def test_chunks_concatenate_to_the_whole(small_dataset, chunk):
    ds, _ = small_dataset
    whole = datasets.from_minari(ds)
    parts = list(datasets.iter_minari(ds, chunk_size=chunk))
    sizes = [len(p["action"]) for p in parts]
    n = ds.total_steps
    assert sizes == [chunk] * (n // chunk) + ([n % chunk] if n % chunk else []) if chunk < n else sizes == [n]
    cat = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(cat)):
        np.testing.assert_array_equal(a, b)


def test_episode_subset_in_given_order(small_dataset):
    ds, _ = small_dataset
    pick = [3, 0, 5]
    data = datasets.from_minari(ds, episode_indices=pick)
    ids = data["collector"]["traj_ids"]
    assert list(dict.fromkeys(ids.tolist())) == pick
    assert len(ids) == sum(len(ds[i]) for i in pick)


def test_fill_buffer_slices_stay_in_episodes(small_dataset):
    ds, _ = small_dataset
    whole = datasets.from_minari(ds)
    n = ds.total_steps
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(n), sampler=rlbuf.SliceSampler(slice_len=2, traj_key=TRAJ),
                            batch_size=16)
    state = datasets.fill_buffer(rb, ds, chunk_size=32, progress=True)
    assert len(state) == n
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(state.storage)):
        np.testing.assert_array_equal(a, np.asarray(b))
    sample = jax.jit(rb.sample)
    for k in range(5):
        state, batch, info = sample(state, jax.random.key(k))
        where = np.asarray(batch["observation"])
        assert (where[:, :, 0] == where[:, :1, 0]).all()  # one episode per slice
        np.testing.assert_array_equal(np.diff(where[:, :, 1], axis=1), 1)


def test_fill_buffer_smaller_than_dataset_warns_and_keeps_newest(small_dataset):
    ds, _ = small_dataset
    whole = datasets.from_minari(ds)
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(40), batch_size=4)
    with pytest.warns(UserWarning, match="only the last 40 remain"):
        state = datasets.fill_buffer(rb, ds, chunk_size=16)
    stored = np.asarray(state.storage["observation"])
    order = (int(state.cursor) + np.arange(40)) % 40
    np.testing.assert_array_equal(stored[order], whole["observation"][-40:])
    with pytest.raises(ValueError, match="ndim=1"):
        datasets.fill_buffer(rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(40, ndim=2), batch_size=4), ds)


def test_jpeg_image_observations_go_through_minari_decoder(minari_root):
    """Image spaces are JPEG-encoded by Minari: read through its own decoder (the generic path),
    so the transitions equal what its episode iterator returns."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(0)
    eps = [EpisodeBuffer(observations=rng.integers(0, 256, (t + 1, 32, 32, 3), dtype=np.uint8),
                         actions=rng.integers(0, 2, t), rewards=np.ones(t),
                         terminations=np.arange(t) == t - 1, truncations=np.zeros(t, bool)) for t in (3, 4)]
    with pytest.warns(UserWarning):
        ds = minari.create_dataset_from_buffers(
            "img/test-v0", eps, observation_space=gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
            action_space=gym.spaces.Discrete(2))
    data = datasets.from_minari(ds)
    assert data["observation"].shape == (7, 32, 32, 3) and data["observation"].dtype == np.uint8
    assert_same(data, reference(ds))


def test_import_rlbuf_does_not_import_minari():
    import subprocess
    import sys

    code = "import sys, rlbuf, rlbuf.datasets; assert 'minari' not in sys.modules and 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _damaged_copy(ds_root, tmp_path, name, damage):
    import shutil

    d = tmp_path / name
    shutil.copytree(ds_root / "gt" / "box-v0", d)
    damage(d / "data")
    return d


def _truncate(path, keep):
    b = path.read_bytes()
    path.write_bytes(b[: keep(len(b))])


def _flip(path, offset):
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, file", [
    (lambda d: _truncate(d / "main_data.hdf5", lambda n: n // 2), "main_data.hdf5"),
    (lambda d: _truncate(d / "main_data.hdf5", lambda n: n - 100), "main_data.hdf5"),
    (lambda d: _flip(d / "main_data.hdf5", 0), "main_data.hdf5"),  # the signature
    (lambda d: _flip(d / "main_data.hdf5", 8), "main_data.hdf5"),  # the superblock
    (lambda d: _truncate(d / "metadata.json", lambda n: n // 2), "metadata.json"),
])
def test_damaged_files_raise_rlbufs_error_naming_the_file(small_dataset, tmp_path, damage, file):
    """Issue 26 item 14: a damaged Minari file raises DatasetCorruptError naming it (not a raw
    OSError/JSONDecodeError); it is an OSError and a ValueError too."""
    _, root = small_dataset
    d = _damaged_copy(root, tmp_path, "ds", damage)
    with pytest.raises(datasets.DatasetCorruptError, match=rf"{d / 'data' / file}.*damaged"):
        datasets.from_minari(d)
    assert issubclass(datasets.DatasetCorruptError, OSError) and issubclass(datasets.DatasetCorruptError, ValueError)


def test_structural_bit_flips_in_hdf5_are_reported(small_dataset, tmp_path):
    """Flips in the HDF5 structure (headers, B-trees, heaps) raise DatasetCorruptError (never a
    raw h5py error or an absurd allocation); flips in the array values cannot be seen (no
    checksums) and load."""
    _, root = small_dataset
    d = _damaged_copy(root, tmp_path, "ds", lambda d: None)
    h5 = d / "data" / "main_data.hdf5"
    orig = h5.read_bytes()
    errors = 0
    for offset in range(0, 4000, 41):
        b = bytearray(orig)
        b[offset] ^= 0xFF
        h5.write_bytes(bytes(b))
        try:
            datasets.from_minari(d)
        except datasets.DatasetCorruptError as e:
            assert str(h5) in str(e)
            errors += 1
    assert errors > 0
