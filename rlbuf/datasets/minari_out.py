"""Collected data out to a Minari dataset: ``to_minari``.

Input, in rlbuf's batch layout (time the last batch axis): one batch (leaves ``[T]``,
``[B, T]`` or ``[W, B, T]``), a list of batches in collection order (each lane continued by
the next batch, as successive ``collect`` calls give them), or a ``BufferState`` (its contents
oldest first, per lane). Keys read: ``"observation"``, ``"action"``, ``("next","observation")``,
``("next","reward")``, ``("next","terminated")``, ``("next","truncated")``,
``("collector","traj_ids")``, and if present ``("next","done")`` (else terminated or truncated)
and ``"step_count"`` / ``"is_init"`` (to tell whether a trajectory's first step is an episode
start).

Episodes: per lane, a trajectory is a run of steps with one traj id, also cut after each done
step. Its Minari episode is its ``T`` steps with ``T + 1`` observations (the observations, then
the last step's ``("next","observation")``). Episodes are written in order of traj id (the
collectors' global counter: the order episodes started in), ties by lane then time.

Partial trajectories (the unfinished tail of each env at the end of the data; in a buffer that
wrapped, the oldest trajectory whose beginning was overwritten):

- ``partial="truncate"`` (default; what ``minari.DataCollector`` itself does with the episode in
  progress when a dataset is created): kept, and an unfinished one gets
  ``truncations[-1] = True`` (time-limit semantics: a learner bootstraps from the last next
  observation, which is right for a cut episode). A trajectory without its beginning is kept as
  it is (it starts from a non-reset observation).
- ``partial="drop"``: only complete episodes are written: ending with a done step and, when
  ``"step_count"`` or ``"is_init"`` is in the data, starting at a reset.
- ``partial="keep"``: kept unchanged (episodes may end with neither flag set).

A buffer state is read from its storage as stored, except that a ``compact_next=True``
buffer's ``("next", k)`` leaves are rebuilt exactly as ``sample`` rebuilds them (an episode
whose final observation the final-observation table lost is skipped with a warning that
counts them, never written with a wrong observation). A buffer with ``keys=`` that does not
store a key above raises naming it, and a ``MaxValueWriter`` buffer (not in time order) gives
no meaningful episodes.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import jax
import numpy as np

from rlbuf import _tree
from rlbuf.datasets.minari_in import minari_module

__all__ = ["to_minari"]

REQUIRED = (
    ("observation",),
    ("action",),
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "truncated"),
    ("collector", "traj_ids"),
)


def _np(x):
    return np.asarray(jax.device_get(x))


def _lanes_from_compact(state, order: np.ndarray):
    """A ``compact_next`` buffer's items ``[L, count, ...]`` with ``("next", k)`` rebuilt (by
    ``CompactTensorStorage.gather``, the sampling path), and bool ``[L, count]``: the item's next
    observation is known (False where the final-observation table lost it)."""
    from rlbuf.storages.compact import CompactTensorStorage

    layout = state.layout
    st = jax.tree.map(_np, state.storage)  # host copy: works for pinned-host storage too
    # the same table size as the buffer's: F rows per lane, read off the state
    rows = int(st.owner.shape[-1])
    shim = CompactTensorStorage(layout.size, ndim=layout.ndim, final_obs_size=rows * layout.n_lanes)
    n = layout.n_lanes
    lane = np.repeat(np.arange(n)[:, None], len(order), axis=1)
    lane_idx = np.unravel_index(lane, layout.lanes) if layout.lanes else ()
    index = tuple(np.asarray(i, np.int32) for i in (*lane_idx, np.broadcast_to(order, lane.shape)))
    items = shim.gather(layout, st, index)
    valid = shim.valid(layout, st, index)
    return jax.tree.map(_np, items), _np(valid)


def _lanes_from_buffer(state) -> tuple:
    """A buffer's stored data as ``[L, count, ...]`` numpy leaves, oldest first per lane, and
    bool ``[L, count]`` (None: all) marking items whose next observation is known."""
    layout = state.layout
    cap, count, cursor = layout.capacity, int(state.count), int(state.cursor)
    order = (cursor - count + np.arange(count)) % cap
    n = layout.n_lanes
    from rlbuf.storages.compact import CompactState

    if isinstance(state.storage, CompactState):
        return _lanes_from_compact(state, order)

    def read(x):
        x = _np(x)
        return x.reshape(n, cap, *x.shape[len(layout.lanes) + 1 :])[:, order]

    return jax.tree.map(read, state.storage), None


def _lanes_from_batch(batch) -> dict:
    """One batch ``[*lanes, T, ...]`` as ``[L, T, ...]`` numpy leaves (lanes from the traj ids)."""
    ids = _np(_tree.get(batch, ("collector", "traj_ids")))
    lead = ids.shape
    if not 1 <= len(lead) <= 3:
        raise ValueError(f"rlbuf.datasets.to_minari: traj ids have shape {lead}; expected [T], [B, T] or [W, B, T]")
    n = int(np.prod(lead[:-1]))

    def read(path, x):
        x = _np(x)
        if x.shape[: len(lead)] != lead:
            raise ValueError(
                f"rlbuf.datasets.to_minari: key {_tree.key_str(_tree.path_to_key(path))} has shape {x.shape}, "
                f"its batch dims must be the traj ids' {lead}"
            )
        return x.reshape(n, lead[-1], *x.shape[len(lead) :])

    return jax.tree_util.tree_map_with_path(read, batch)


def _as_lanes(data) -> tuple:
    """``(lanes, known)``: ``[L, T, ...]`` numpy leaves and the bool ``[L, T]`` of items whose
    next observation is known (None: all)."""
    from rlbuf.buffers.replay_buffer import BufferState

    if isinstance(data, BufferState):
        return _lanes_from_buffer(data)
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("rlbuf.datasets.to_minari: an empty list of batches")
        parts = [_lanes_from_batch(b) for b in data]
        try:
            return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts), None
        except ValueError as e:
            raise ValueError(
                "rlbuf.datasets.to_minari: the batches of the list must have the same keys, lanes and "
                f"trailing shapes (successive batches of one collector): {e}"
            ) from None
    if isinstance(data, dict):
        return _lanes_from_batch(data), None
    raise TypeError(
        "rlbuf.datasets.to_minari: expected a batch dict, a list of batches or a BufferState, got "
        f"{type(data).__name__}"
    )


def _infer_space(x: np.ndarray, what: str):
    """A space for leaf ``x`` ``[N, ...]`` when none is given: Box over the dtype's range; integer
    scalar actions: ``Discrete(max + 1)`` (pass ``action_space=`` for the true one)."""
    import gymnasium as gym

    if isinstance(x, dict):
        return gym.spaces.Dict({k: _infer_space(v, what) for k, v in x.items()})
    shape = x.shape[2:]
    if x.dtype == np.bool_:
        return gym.spaces.MultiBinary(list(shape) or 1) if shape else gym.spaces.Discrete(2)
    if np.issubdtype(x.dtype, np.integer):
        if what == "action" and not shape:
            return gym.spaces.Discrete(int(x.max(initial=0)) + 1)
        info = np.iinfo(x.dtype)
        return gym.spaces.Box(info.min, info.max, shape, x.dtype.type)
    if np.issubdtype(x.dtype, np.floating):
        return gym.spaces.Box(-np.inf, np.inf, shape, x.dtype.type)
    raise TypeError(f"rlbuf.datasets.to_minari: no space for {what} dtype {x.dtype}; pass the space")


def _runs(lanes: dict, done: np.ndarray) -> list:
    """``(traj_id, lane, start, end)`` of each trajectory: a run of one id, cut after done steps."""
    ids = _tree.get(lanes, ("collector", "traj_ids"))
    runs = []
    for lane in range(ids.shape[0]):
        cut = np.flatnonzero((ids[lane, 1:] != ids[lane, :-1]) | done[lane, :-1]) + 1
        bounds = np.concatenate([[0], cut, [ids.shape[1]]])
        runs += [(int(ids[lane, s]), lane, int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return sorted(runs)


def to_minari(
    dataset_id: str,
    data: Any,
    *,
    env: Any = None,
    observation_space: Any = None,
    action_space: Any = None,
    partial: str = "truncate",
    data_format: Optional[str] = None,
    **metadata: Any,
):
    """Write ``data`` (batches or a buffer state, see the module docstring) as Minari dataset
    ``dataset_id`` in the local Minari root (``MINARI_DATASETS_PATH``); returns the
    ``minari.MinariDataset``, which ``minari.load_dataset(dataset_id)`` opens again.

    Args:
      env: a gymnasium env id, ``gymnasium.Env`` or ``EnvSpec`` (recorded, so
        ``dataset.recover_environment()`` works; its spaces are used unless given).
      observation_space, action_space: gymnasium spaces of the data; without them and without
        ``env`` they are inferred (``Box`` over the dtype's range, ``Dict`` for nested
        observations, ``Discrete(max + 1)`` for integer scalar actions).
      partial: ``"truncate"`` (default), ``"drop"`` or ``"keep"``: unfinished trajectories, see
        the module docstring.
      data_format: Minari's storage format (default: Minari's, HDF5).
      **metadata: passed to ``minari.create_dataset_from_buffers`` (``algorithm_name`` defaults
        to ``"rlbuf"``, ``description``, ``author``, ``author_email``, ``code_permalink``,
        ``eval_env``, ...).
    """
    minari = minari_module()
    from minari.data_collector import EpisodeBuffer

    if partial not in ("truncate", "drop", "keep"):
        raise ValueError(f"rlbuf.datasets.to_minari: partial must be 'truncate', 'drop' or 'keep', got {partial!r}")
    lanes, known = _as_lanes(data)
    for key in REQUIRED:
        if not _tree.has(lanes, key):
            raise KeyError(f"rlbuf.datasets.to_minari: the data has no key {_tree.key_str(key)}")
    get = lambda k: _tree.get(lanes, k)  # noqa: E731
    term, trunc = get(("next", "terminated")).astype(bool), get(("next", "truncated")).astype(bool)
    done = get(("next", "done")).astype(bool) if _tree.has(lanes, ("next", "done")) else term | trunc
    starts = None
    if _tree.has(lanes, "step_count"):
        starts = get("step_count") == 0
    elif _tree.has(lanes, "is_init"):
        starts = get("is_init").astype(bool)
    obs, nobs, act, rew = get("observation"), get(("next", "observation")), get("action"), get(("next", "reward"))

    episodes, unknown = [], 0
    for _, lane, s, e in _runs(lanes, done):
        if known is not None and not known[lane, e - 1]:  # its final observation was lost (compact_next)
            unknown += 1
            continue
        finished = bool(done[lane, e - 1])
        if partial == "drop" and not (finished and (starts is None or bool(starts[lane, s]))):
            continue
        tr = trunc[lane, s:e].copy()
        if partial == "truncate" and not finished:
            tr[-1] = True
        episodes.append(
            EpisodeBuffer(
                observations=jax.tree.map(
                    lambda o, no: np.concatenate([o[lane, s:e], no[lane, e - 1 : e]]), obs, nobs
                ),
                actions=jax.tree.map(lambda a: a[lane, s:e], act),
                rewards=rew[lane, s:e],
                terminations=term[lane, s:e],
                truncations=tr,
            )
        )
    if unknown:
        warnings.warn(
            f"rlbuf.datasets.to_minari: {unknown} trajectories skipped: the compact_next buffer's final-"
            "observation table lost their last next observation (a larger LazyTensorStorage(final_obs_size=...) "
            "keeps them)",
            stacklevel=2,
        )
    if not episodes:
        raise ValueError(f"rlbuf.datasets.to_minari: no episode to write (partial={partial!r})")
    if env is None:
        observation_space = observation_space or _infer_space(obs, "observation")
        action_space = action_space or _infer_space(act, "action")
    metadata.setdefault("algorithm_name", "rlbuf")
    metadata.setdefault("description", f"{len(episodes)} episodes collected with rlbuf")
    with warnings.catch_warnings():
        # Minari warns for every optional metadata field left None (author, permalink, env, ...).
        warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None).*", category=UserWarning)
        return minari.create_dataset_from_buffers(
            dataset_id,
            episodes,
            env=env,
            observation_space=observation_space,
            action_space=action_space,
            data_format=data_format,
            **metadata,
        )
