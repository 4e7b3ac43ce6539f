"""The writer interface: which time slots an ``add`` fills.

A writer is a frozen, hashable object with pure methods (the buffer core calls nothing else):

- ``check(layout)``: raise on a storage layout the writer cannot handle (``ReplayBuffer.init``);
- ``init(layout) -> wstate``: its own state (a pytree, kept in ``BufferState.writer``);
- ``write(ring, wstate, data) -> (write, wstate, data)``: the slots to fill, as a
  :class:`WriteInfo`, and the data to put there (possibly trimmed along time). ``ring`` is
  the ring before the write (``rlbuf._ring.Ring``: cursor, count, added, layout);
- ``split(n_groups, *, ndim) -> Writer``: the writer each of ``n_groups`` lane groups runs
  (``rlbuf.shard``, ``PerWorkerReplayBuffer``); default: itself.

``provides`` names the guarantees a writer gives samplers; a sampler lists what it needs in
``Sampler.requires`` and ``ReplayBuffer.init`` refuses the pair if one is missing:

- ``"time_order"``: every ``add`` fills the next ``T`` slots in time, round-robin, so a run of
  consecutive slots holds consecutive steps (what trajectory bookkeeping relies on).

Every sampler is told the same ``WriteInfo`` (``Sampler.on_write``), so samplers that keep
bookkeeping (trajectory boundaries, priorities) learn exactly which slots changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax

#: The ``provides`` / ``requires`` guarantee of round-robin, time-ordered writes.
TIME_ORDER = "time_order"


class WriteInfo(NamedTuple):
    """What one ``add`` did to the ring (all int32 arrays).

    ``positions``: ``[t]`` physical time slots written, in data order (the same slots in every
    lane), or ``[*lanes, t]``, each lane's own slots (``MaxValueWriter`` with lanes; a writer
    that provides ``"time_order"`` always gives ``[t]``); a slot ``>= capacity`` means
    "dropped". ``skip``: static count of leading data steps discarded before ``positions[0]``
    (a batch longer than the ring). ``cursor``/``count``: the ring before the write;
    ``new_cursor``/``new_count``: after it.
    """

    positions: jax.Array
    skip: int
    cursor: jax.Array
    count: jax.Array  # type: ignore[assignment]  # the ring count (shadows tuple.count, unused here)
    new_cursor: jax.Array
    new_count: jax.Array


@dataclasses.dataclass(frozen=True)
class Writer:
    """Base class: the default of every hook but ``write``."""

    #: Guarantees given to samplers (see the module docstring).
    provides: ClassVar[frozenset] = frozenset()

    def check(self, layout) -> None:
        pass

    def init(self, layout) -> Any:
        return ()

    def write(self, ring, wstate, data) -> tuple[WriteInfo, Any, Any]:
        raise NotImplementedError

    def split(self, n_groups: int, *, ndim: int) -> "Writer":
        return self
