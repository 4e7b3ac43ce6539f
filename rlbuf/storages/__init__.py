"""Storages: where a replay buffer keeps its transitions.

- :mod:`rlbuf.storages.base`: the seam, ``Storage`` (the hooks ``ReplayBuffer`` calls) and
  ``Layout`` (the static description of what is stored);
- :mod:`rlbuf.storages.tensor`: ``LazyTensorStorage``, preallocated lane-major arrays;
- :mod:`rlbuf.storages.compact`: ``CompactTensorStorage``, the ``compact_next`` variant
  (``LazyTensorStorage(..., compact_next=True)``), each observation stored once.
"""

from rlbuf.storages.base import Layout, Storage
from rlbuf.storages.compact import CompactState, CompactTensorStorage
from rlbuf.storages.tensor import LazyTensorStorage

__all__ = ["CompactState", "CompactTensorStorage", "Layout", "LazyTensorStorage", "Storage"]
