"""The ``compact_next`` names at their second-release path; they live in
:mod:`rlbuf.storages.compact`. Checkpoints name ``CompactState`` by this path."""

from rlbuf.storages.compact import CompactState, CompactTensorStorage, compacted_keys, nbytes, table_rows

__all__ = ["CompactState", "CompactTensorStorage", "compacted_keys", "nbytes", "table_rows"]
