"""Writers decide which time slots an ``add`` fills.

A writer is a frozen, hashable object with two pure methods:

- ``init(layout) -> wstate``: its own state (a pytree, kept in ``BufferState.writer``);
- ``write(layout, state, data) -> (write, wstate, data)``: the slots to fill, as a
  :class:`WriteInfo`, and the data to put there (possibly trimmed along time).

Every sampler is told the same ``WriteInfo`` (``Sampler.on_write``), so samplers that keep
bookkeeping (trajectory boundaries, priorities) learn exactly which slots changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from rlbuf import _ring


class WriteInfo(NamedTuple):
    """What one ``add`` did to the ring (all int32 arrays).

    ``positions``: ``[t]`` physical time slots written, in data order (the same slots in every
    lane); a slot ``>= capacity`` means "dropped". ``skip``: static count of leading data steps
    discarded before ``positions[0]`` (a batch longer than the ring). ``cursor``/``count``:
    the ring before the write; ``new_cursor``/``new_count``: after it.
    """

    positions: jax.Array
    skip: int
    cursor: jax.Array
    count: jax.Array
    new_cursor: jax.Array
    new_count: jax.Array


@dataclasses.dataclass(frozen=True)
class RoundRobinWriter:
    """Writes each batch at the cursor and wraps around, overwriting the oldest steps first.

    A batch longer than the ring keeps only its last ``capacity`` steps.
    """

    def init(self, layout) -> Any:
        return ()

    def write(self, layout, state, data) -> tuple[WriteInfo, Any, Any]:
        t_len = jax.tree_util.tree_leaves(data)[0].shape[layout.ndim - 1]
        cap = layout.capacity
        positions, skip, new_cursor = _ring.write_positions(state.cursor, t_len, cap)
        new_count = jax.numpy.minimum(state.count + positions.shape[0], cap)
        info = WriteInfo(positions, skip, state.cursor, state.count, new_cursor, new_count)
        return info, state.writer, data
