"""The storage names at their first-release path (``from rlbuf.storage import LazyTensorStorage``);
they live in :mod:`rlbuf.storages`. Checkpoints name ``Layout`` by this path."""

from rlbuf.storages import CompactTensorStorage, Layout, LazyTensorStorage, Storage

__all__ = ["CompactTensorStorage", "Layout", "LazyTensorStorage", "Storage"]
