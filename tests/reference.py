"""A plain-numpy ring buffer: the reference model the rlbuf tests check against.

Deliberately naive and independent of ``rlbuf._ring``: it keeps the whole history of every
lane and derives everything from "step ``i`` of a lane (counting from 0 over all adds) lives
in physical slot ``i % capacity``, and the last ``min(added, capacity)`` steps are stored".

Data is a nested dict of arrays with leaves ``[*lanes, T, ...]`` (time last of the batch
dims, as ``rlbuf.LazyTensorStorage(ndim=len(lanes) + 1)`` expects).

Usage::

    ref = NumpyRingBuffer(capacity_per_lane=8, lanes=(3,))
    ref.add({"obs": np.zeros((3, 5, 2))})
    ref.cursor, ref.count           # next slot to write, written slots per lane
    ref.stored()["obs"]             # [3, count, 2]: each lane's stored steps, oldest first
    ref.storage()["obs"]            # [3, capacity, 2]: the physical ring, zeros where unwritten
    ref.items()["obs"]              # [3 * count, 2]: every stored transition, lane-major
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _flatten(tree: Any, prefix: tuple = ()) -> dict:
    if isinstance(tree, dict):
        out = {}
        for k in sorted(tree):
            out.update(_flatten(tree[k], prefix + (k,)))
        return out
    return {prefix: np.asarray(tree)}


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        for k in key[:-1]:
            node = node.setdefault(k, {})
        node[key[-1]] = value
    return out


class NumpyRingBuffer:
    """Reference ring of ``capacity_per_lane`` time slots in each of ``prod(lanes)`` lanes.

    ``lanes``: the batch dims before time (``()`` for ``ndim=1`` data ``[T, ...]``).
    """

    def __init__(self, capacity_per_lane: int, lanes: tuple = ()):
        if capacity_per_lane < 1:
            raise ValueError("capacity_per_lane must be >= 1")
        self.capacity = int(capacity_per_lane)
        self.lanes = tuple(lanes)
        self.added = 0  # time steps ever added per lane
        self._history: dict | None = None  # key -> [*lanes, added, ...]

    @property
    def ndim(self) -> int:
        return len(self.lanes) + 1

    @property
    def cursor(self) -> int:
        """Next physical slot to write."""
        return self.added % self.capacity

    @property
    def count(self) -> int:
        """Written time slots per lane."""
        return min(self.added, self.capacity)

    def __len__(self) -> int:
        return self.count * int(np.prod(self.lanes, dtype=np.int64))

    def add(self, data: dict) -> None:
        """Append ``data`` (leaves ``[*lanes, T, ...]``) to every lane's history."""
        flat = _flatten(data)
        ax = len(self.lanes)
        t_lens = set()
        for key, x in flat.items():
            if x.shape[:ax] != self.lanes:
                raise ValueError(f"{key}: lane dims {x.shape[:ax]} != {self.lanes}")
            t_lens.add(x.shape[ax])
        if len(t_lens) != 1:
            raise ValueError(f"leaves disagree on the time length: {t_lens}")
        if self._history is None:
            self._history = {k: x.copy() for k, x in flat.items()}
        else:
            if set(flat) != set(self._history):
                raise ValueError(f"keys {sorted(flat)} != {sorted(self._history)}")
            self._history = {k: np.concatenate([self._history[k], flat[k]], axis=ax) for k in flat}
        self.added += t_lens.pop()

    def _flat_stored(self) -> dict:
        ax = len(self.lanes)
        n = self.count
        return {k: np.take(h, np.arange(self.added - n, self.added), axis=ax) for k, h in self._history.items()}

    def stored(self) -> dict:
        """Per lane, the stored steps in age order: leaves ``[*lanes, count, ...]``."""
        return _unflatten(self._flat_stored()) if self._history is not None else {}

    def storage(self) -> dict:
        """The physical ring: leaves ``[*lanes, capacity, ...]``, step ``i`` at slot ``i % capacity``,
        zeros in slots never written."""
        if self._history is None:
            return {}
        ax = len(self.lanes)
        out = {}
        for k, h in self._history.items():
            shape = list(h.shape)
            shape[ax] = self.capacity
            ring = np.zeros(shape, h.dtype)
            for i in range(max(self.added - self.capacity, 0), self.added):
                idx = (slice(None),) * ax + (i % self.capacity,)
                ring[idx] = h[idx[:-1] + (i,)]
            out[k] = ring
        return _unflatten(out)

    def items(self) -> dict:
        """Every stored transition, lane-major then age order: leaves ``[prod(lanes) * count, ...]``."""
        if self._history is None:
            return {}
        n = len(self)
        return _unflatten({k: x.reshape(n, *x.shape[len(self.lanes) + 1 :]) for k, x in self._flat_stored().items()})


def valid_slice_starts(ref: NumpyRingBuffer, traj_key: tuple, n: int, strict: bool = True) -> set:
    """``{(flat_lane, logical_rank)}`` of the stored steps that start a valid ``n``-step slice:
    the ``n`` steps from there are stored, consecutive in time and share one value of
    ``traj_key`` (leaves ``[*lanes, T]``). ``strict=False`` also allows the first stored step of
    a shorter stored trajectory. ``logical_rank`` counts from the oldest stored step (0)."""
    if ref.count == 0:
        return set()
    ids = _flatten(ref.stored())[tuple(traj_key)]
    n_lanes = int(np.prod(ref.lanes, dtype=np.int64))
    ids = ids.reshape(n_lanes, ref.count)
    out = set()
    for lane in range(n_lanes):
        row = ids[lane]
        for r in range(ref.count):
            run = row[r : r + n]
            if len(run) == n and (run == row[r]).all():
                out.add((lane, r))
            elif not strict and (r == 0 or row[r - 1] != row[r]):
                out.add((lane, r))
    return out


def stored_step(ref: NumpyRingBuffer, flat_lane: int, stamp: int) -> bool:
    """Whether step ``stamp`` (counted over all adds) of a lane is still stored."""
    return ref.added - ref.count <= stamp < ref.added and 0 <= flat_lane < int(np.prod(ref.lanes, dtype=np.int64))
