"""Minari datasets into rlbuf's batch layout: ``from_minari``, ``iter_minari``, ``fill_buffer``.

A Minari episode of ``T`` steps stores ``T + 1`` observations (the reset observation, then the
observation after each step), ``T`` actions, rewards, terminations and truncations. It becomes
``T`` transitions in the layout of rlbuf's collectors (leaves ``[N, ...]``, episodes one after
the other in the dataset's episode order):

- ``"observation"``: ``observations[t]``; ``("next", "observation")``: ``observations[t + 1]``
  (at the last step the episode's final observation, never a reset one). A ``Dict``
  observation space gives nested dicts (``Tuple`` spaces: tuples).
- ``"action"``: ``actions[t]`` (nested like the action space).
- ``("next", "reward")``: float, ``("next", "terminated")`` / ``("next", "truncated")``: bool,
  as stored; ``("next", "done")``: their ``or``.
- ``("collector", "traj_ids")``: int32, the Minari episode id, constant over an episode; ids
  are unique, so ``SliceSampler(traj_key=("collector", "traj_ids"))`` never crosses episodes.

Dtypes are JAX's canonical ones (float64 -> float32, int64 -> int32 unless ``jax_enable_x64``),
so the data goes into a buffer as is. Episode ``infos`` are not read.

Memory: ``iter_minari`` reads episode by episode into chunks of ``chunk_size`` transitions
(the last one shorter); ``fill_buffer`` adds each chunk to a buffer and drops it, so at most
one chunk exists beside the buffer. ``from_minari`` writes straight into arrays of the
dataset's size (no intermediate copy). HDF5 datasets (Minari's default format) are read with
h5py's low-level API, only the five arrays used (Minari's own iterator also decodes infos and
goes through h5py's high-level wrappers, which cost more than the reads for short episodes);
other formats and JPEG-encoded image spaces go through Minari's storage API.

Damaged files: a ``metadata.json`` that is not valid JSON, or a ``main_data.hdf5`` that HDF5
cannot open or read (truncated, a flipped bit in its structure, an array of another shape
than its episode's) raise :class:`DatasetCorruptError` naming the file. Minari's HDF5 files
carry no checksums: a flipped bit inside the array values themselves cannot be detected.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import warnings
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np

__all__ = ["DatasetCorruptError", "fill_buffer", "from_minari", "iter_minari", "load_minari_dataset"]

TRAJ = ("collector", "traj_ids")
DEFAULT_CHUNK = 1 << 16


class DatasetCorruptError(OSError, ValueError):
    """A dataset file is damaged (truncated, bit-flipped, not valid JSON); the message names the
    file. An ``OSError`` (like ``rlbuf.checkpoint.CheckpointCorruptError``) and a ``ValueError``
    (what a bad ``metadata.json`` raised before)."""


#: What h5py, json and Minari raise on a damaged file (h5py maps HDF5 errors to OSError,
#: KeyError, ValueError or RuntimeError; a corrupt shape can ask for absurd memory).
_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, MemoryError, TypeError, IndexError)


@contextlib.contextmanager
def _reading(path, what: str = "read"):
    """Errors raised while reading ``path`` become a :class:`DatasetCorruptError` naming it."""
    try:
        yield
    except DatasetCorruptError:
        raise
    except _READ_ERRORS as e:
        raise DatasetCorruptError(
            f"rlbuf.datasets: cannot {what} {path}: the file is damaged (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from e


def _open_dataset(minari, data_dir: pathlib.Path):
    """``minari.MinariDataset(data_dir)``, its files checked first so that damage names the file."""
    meta = data_dir / "metadata.json"
    with _reading(meta, "parse"):
        json.loads(meta.read_bytes())
    h5 = data_dir / "main_data.hdf5"
    with _reading(h5 if h5.is_file() else data_dir, "open"):
        if h5.is_file():
            import h5py

            with h5py.File(h5, "r"):
                pass
        return minari.MinariDataset(data_dir)


def minari_module():
    try:
        import minari
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rlbuf.datasets needs minari with a storage backend, an optional dependency: "
            "pip install 'rlbuf[offline]'"
        ) from e
    return minari


def load_minari_dataset(dataset_or_id: Any):
    """A ``minari.MinariDataset`` from a dataset, a local dataset directory (the dataset's
    folder or its ``data`` folder), or an id in the local Minari root
    (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``; never downloads)."""
    minari = minari_module()
    if isinstance(dataset_or_id, minari.MinariDataset):
        return dataset_or_id
    if isinstance(dataset_or_id, (str, os.PathLike)):
        path = pathlib.Path(dataset_or_id)
        for d in (path, path / "data"):
            if (d / "metadata.json").is_file():
                return _open_dataset(minari, d)
        if isinstance(dataset_or_id, str) and not path.is_absolute():
            from minari.storage import get_dataset_path

            data_dir = pathlib.Path(get_dataset_path(dataset_or_id)) / "data"
            if (data_dir / "metadata.json").is_file():
                return _open_dataset(minari, data_dir)
            return minari.load_dataset(dataset_or_id, download=False)
        raise FileNotFoundError(f"rlbuf.datasets: no Minari dataset (metadata.json) in {path} or {path / 'data'}")
    raise TypeError(
        f"rlbuf.datasets: expected a MinariDataset, a dataset directory or a dataset id, got "
        f"{type(dataset_or_id).__name__}"
    )


# --------------------------------------------------------------------------- reading episodes


def _is_image(space) -> bool:
    from minari.dataset.minari_storage import is_image_space

    return is_image_space(space)


def _h5_readable(space) -> bool:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        return all(_h5_readable(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return all(_h5_readable(s) for s in space.spaces)
    return isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary))


def _h5_read(gid, name: bytes, space, limit: int):
    """Dataset (or group, for ``Dict``/``Tuple`` spaces) ``name`` under HDF5 group id ``gid``, as
    Minari writes it (dicts by key, tuples as ``_index_i``), with h5py's low-level API: the
    high-level ``Group[...]``/``Dataset[()]`` wrappers cost more than the read itself for the
    short arrays of one episode."""
    import gymnasium as gym
    import h5py

    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        sub = h5py.h5g.open(gid, name)
        if isinstance(space, gym.spaces.Dict):
            return {k: _h5_read(sub, k.encode(), s, limit) for k, s in space.spaces.items()}
        return tuple(_h5_read(sub, f"_index_{i}".encode(), s, limit) for i, s in enumerate(space.spaces))
    d = h5py.h5d.open(gid, name)
    # a damaged header can give any shape: check it before allocating (``limit``: the
    # dataset's steps + 1; trailing dims: the space's)
    want = () if space is None else tuple(getattr(space, "shape", None) or ())
    if len(d.shape) != 1 + len(want) or d.shape[0] > limit or tuple(d.shape[1:]) != want:
        raise ValueError(f"array {name.decode()} has shape {d.shape}, expected [<= {limit}, *{list(want)}]")
    out = np.empty(d.shape, d.dtype)
    d.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _h5_episodes(storage, indices, limit: int) -> Iterator[tuple]:
    import h5py

    path = pathlib.Path(storage.data_path) / "main_data.hdf5"
    with _reading(path, "open"):
        f = h5py.File(path, "r")
    with f:
        for i in indices:
            with _reading(path, f"read episode {int(i)} of"):
                g = h5py.h5g.open(f.id, f"episode_{int(i)}".encode())
                ep = (
                    int(i),
                    _h5_read(g, b"observations", storage.observation_space, limit + 1),
                    _h5_read(g, b"actions", storage.action_space, limit),
                    _h5_read(g, b"rewards", None, limit),
                    _h5_read(g, b"terminations", None, limit),
                    _h5_read(g, b"truncations", None, limit),
                )
            yield ep


def _episodes(dataset, indices, total: int) -> Iterator[tuple]:
    """``(id, observations [T+1], actions [T], rewards, terminations, truncations)`` per episode
    (``total``: the steps of these episodes, a bound on each one's length)."""
    storage = dataset.storage
    spaces = (storage.observation_space, storage.action_space)
    jpeg = storage.jpeg_encoding and any(_is_image(s) for s in jax.tree.leaves(spaces, is_leaf=_is_image))
    if storage.FORMAT == "hdf5" and not jpeg and all(map(_h5_readable, spaces)):
        yield from _h5_episodes(storage, indices, total)
        return
    with _reading(storage.data_path, "read the episodes in"):
        it = iter(storage.get_episodes(indices))
    while True:  # one episode at a time (memory), each read checked
        with _reading(storage.data_path, "read the episodes in"):
            ep = next(it, None)
        if ep is None:
            return
        yield ep["id"], ep["observations"], ep["actions"], ep["rewards"], ep["terminations"], ep["truncations"]


def _transitions(episode) -> tuple[int, dict]:
    """One episode as a batch of ``T`` transitions (numpy leaves ``[T, ...]``, stored dtypes)."""
    eid, obs, act, rew, term, trunc = episode
    t_len = len(rew)
    for name, x in (("actions", act), ("terminations", term), ("truncations", trunc)):
        for leaf in jax.tree.leaves(x):
            if len(leaf) != t_len:
                raise ValueError(f"rlbuf.datasets: episode {eid} has {len(leaf)} {name} for {t_len} rewards")
    for leaf in jax.tree.leaves(obs):
        if len(leaf) != t_len + 1:
            raise ValueError(
                f"rlbuf.datasets: episode {eid} has {len(leaf)} observations for {t_len} steps "
                f"(Minari stores T + 1: the reset observation and one per step)"
            )
    term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
    batch = {
        "observation": jax.tree.map(lambda x: x[:-1], obs),
        "action": act,
        "next": {
            "observation": jax.tree.map(lambda x: x[1:], obs),
            "reward": np.asarray(rew),
            "terminated": term,
            "truncated": trunc,
            "done": term | trunc,
        },
        "collector": {"traj_ids": np.full((t_len,), eid, np.int32)},
    }
    return t_len, batch


def _alloc(example: dict, n: int) -> dict:
    def leaf(x):
        x = np.asarray(x)
        return np.empty((n, *x.shape[1:]), jax.dtypes.canonicalize_dtype(x.dtype))

    return jax.tree.map(leaf, example)


def _episode_indices(dataset, episode_indices) -> np.ndarray:
    if episode_indices is None:
        return np.asarray(dataset.episode_indices)
    idx = np.asarray(episode_indices, dtype=np.int64)
    known = set(np.asarray(dataset.episode_indices).tolist())
    bad = [int(i) for i in idx if int(i) not in known]
    if bad:
        raise ValueError(f"rlbuf.datasets: episode indices {bad[:5]} are not in the dataset")
    return idx


def _total_steps(dataset, indices) -> int:
    if len(indices) == len(dataset.episode_indices) and np.array_equal(indices, dataset.episode_indices):
        return int(dataset.total_steps)
    with _reading(dataset.storage.data_path, "read the episode metadata in"):
        return int(sum(m["total_steps"] for m in dataset.storage.get_episode_metadata(indices)))


def iter_minari(
    dataset_or_id: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    episode_indices: Optional[Sequence[int] | np.ndarray] = None,
    progress: bool = False,
) -> Iterator[dict]:
    """Yield the dataset's transitions (layout in the module docstring) in chunks of
    ``chunk_size`` (numpy leaves ``[chunk_size, ...]``; the last chunk holds the rest), episodes
    in the order of ``episode_indices`` (default: the dataset's). An episode may span two
    chunks; its traj id keeps them one trajectory in a buffer. ``progress``: a tqdm bar over
    transitions."""
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"rlbuf.datasets: chunk_size must be a positive int, got {chunk_size!r}")
    dataset = load_minari_dataset(dataset_or_id)
    indices = _episode_indices(dataset, episode_indices)
    total = _total_steps(dataset, indices)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="transitions", disable=not progress, desc=f"minari {dataset.id}")
    chunk, treedef, fill, emitted, size = None, None, 0, 0, min(chunk_size, total)
    leaves: list[Any] = []  # the current chunk's numpy leaves, written in place
    try:
        for episode in _episodes(dataset, indices, total):
            t_len, batch = _transitions(episode)
            src, tdef = jax.tree.flatten(batch)
            if treedef is None:
                treedef = tdef
            elif tdef != treedef:
                raise ValueError(f"rlbuf.datasets: episode {episode[0]} has another structure than the first episode")
            done = 0
            while done < t_len:
                if chunk is None:
                    if size <= 0:
                        raise ValueError(f"rlbuf.datasets: the episodes hold more steps than the metadata's {total}")
                    chunk = _alloc(batch, size)
                    leaves = jax.tree.leaves(chunk)
                k = min(t_len - done, size - fill)
                for dst, x in zip(leaves, src):
                    dst[fill : fill + k] = x[done : done + k]
                fill, done = fill + k, done + k
                if fill == size:
                    yield chunk
                    bar.update(fill)
                    chunk, fill, emitted = None, 0, emitted + fill
                    size = min(chunk_size, total - emitted)
        if chunk is not None and fill:
            yield jax.tree.map(lambda x: x[:fill], chunk)
            bar.update(fill)
    finally:
        bar.close()


def from_minari(
    dataset_or_id: Any,
    *,
    episode_indices: Optional[Sequence[int] | np.ndarray] = None,
    progress: bool = False,
) -> dict:
    """The whole dataset as one batch of ``[N]`` numpy leaves (layout in the module docstring),
    ready for ``ReplayBuffer(storage=LazyTensorStorage(N), ...)`` (``ndim=1``): ``rb.add(rb.init(
    data), data)``. For datasets larger than memory allows twice, use :func:`fill_buffer`."""
    dataset = load_minari_dataset(dataset_or_id)
    indices = _episode_indices(dataset, episode_indices)
    total = _total_steps(dataset, indices)
    if total == 0:
        raise ValueError(f"rlbuf.datasets: dataset {dataset.id} has no steps")
    (data,) = iter_minari(dataset, chunk_size=total, episode_indices=indices, progress=progress)
    return data


@functools.lru_cache(maxsize=16)
def _jitted_add(rb):
    # One jitted add per buffer config, so filling again (or another dataset of the same
    # structure) does not compile again.
    return jax.jit(rb.add, donate_argnums=0)


def fill_buffer(
    rb,
    dataset_or_id: Any,
    *,
    state=None,
    chunk_size: int = DEFAULT_CHUNK,
    episode_indices: Optional[Sequence[int] | np.ndarray] = None,
    progress: bool = False,
):
    """Add the dataset to replay buffer ``rb`` (``LazyTensorStorage(..., ndim=1)``) chunk by chunk
    with a jitted, donated ``rb.add``; returns the buffer state. ``state``: a state of ``rb`` to
    add to (default: a new one, ``rb.init`` of the first chunk). If the dataset holds more
    transitions than the buffer, a warning says so and the oldest are overwritten (ring order).
    At most one chunk of ``chunk_size`` transitions is in host memory beside the buffer."""
    if rb.storage.ndim != 1:
        raise ValueError(
            f"rlbuf.datasets.fill_buffer: the buffer's storage has ndim={rb.storage.ndim}; a dataset "
            "is a flat sequence of transitions, use LazyTensorStorage(max_size, ndim=1)"
        )
    dataset = load_minari_dataset(dataset_or_id)
    indices = _episode_indices(dataset, episode_indices)
    add = _jitted_add(rb)
    total = _total_steps(dataset, indices)
    for chunk in iter_minari(dataset, chunk_size=chunk_size, episode_indices=indices, progress=progress):
        if state is None:
            state = rb.init(chunk)
            if total > state.capacity:
                warnings.warn(
                    f"rlbuf.datasets.fill_buffer: dataset {dataset.id} has {total} transitions, the buffer "
                    f"holds {state.capacity}: only the last {state.capacity} remain",
                    stacklevel=2,
                )
        state = add(state, chunk)
    if state is None:
        raise ValueError(f"rlbuf.datasets: dataset {dataset.id} has no steps")
    return state
