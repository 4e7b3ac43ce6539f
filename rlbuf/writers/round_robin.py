"""``RoundRobinWriter``: each ``add`` fills the next slots in time, wrapping around."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from rlbuf import _ring
from rlbuf.writers.base import TIME_ORDER, WriteInfo, Writer


@dataclasses.dataclass(frozen=True)
class RoundRobinWriter(Writer):
    """Writes each batch at the cursor and wraps around, overwriting the oldest steps first.

    A batch longer than the ring keeps only its last ``capacity`` steps.
    """

    provides = frozenset({TIME_ORDER})

    def write(self, ring, wstate, data) -> tuple[WriteInfo, Any, Any]:
        t_len = jax.tree_util.tree_leaves(data)[0].shape[ring.layout.ndim - 1]
        cap = ring.capacity
        positions, skip, new_cursor = _ring.write_positions(ring.cursor, t_len, cap)
        new_count = _ring.add_count(ring.count, positions.shape[0], cap)
        return WriteInfo(positions, skip, ring.cursor, ring.count, new_cursor, new_count), wstate, data
