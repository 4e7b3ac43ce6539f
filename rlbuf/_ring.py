"""Index arithmetic of the ring, in one place: every writer and sampler goes through here.

Storage leaves are laid out lane-major, ``[*lanes, capacity, ...]``: ``lanes`` are the
``ndim - 1`` leading batch dims of the data (envs, workers) and the ring runs along time,
the last batch dim. All lanes share one write ``cursor`` (next physical time slot to write)
and one ``count`` (how many time slots hold data, ``<= capacity``). Round-robin writing keeps
the invariant that the written slots are ``[0, count)``, so "physical slot ``t`` is written"
is simply ``t < count``.

Physical slot ``t`` has *age rank* ``logical(t)`` in ``[0, count)``: 0 is the oldest step of
each lane, ``count - 1`` the newest. A window of ``n`` consecutive steps starting at physical
``t`` crosses neither the write head nor an unwritten slot iff ``logical(t) + n <= count``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _xla


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Ring:
    """Read-only view of a buffer's ring, the one thing every writer and sampler hook sees.

    - ``cursor``: int32 ``[]``, next physical time slot to write;
    - ``count``: int32 ``[]``, written time slots per lane (``<= capacity``; written slots are
      ``[0, count)``);
    - ``added``: int32 ``[]``, time steps ever added per lane (the *stamp* of the next step;
      the ring holds stamps ``[added - count, added)``);
    - ``layout``: the static ``rlbuf.storages.base.Layout`` (lanes, capacity, leaf specs).

    Hooks get the ring as it is *after* the write they are told about (``on_write``) or at
    the call (``sample``, ``can_sample``, ``update_priority``); ``rlbuf.writers.WriteInfo``
    carries the cursor and count before the write. Samplers keep no copy of these counters.
    """

    cursor: jax.Array
    count: jax.Array
    added: jax.Array
    layout: Any = dataclasses.field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        return self.layout.capacity

    @property
    def lanes(self) -> tuple:
        return self.layout.lanes

    @property
    def n_lanes(self) -> int:
        return self.layout.n_lanes

    @property
    def oldest_slot(self):
        """Physical slot of the oldest stored step."""
        return oldest(self.cursor, self.count, self.layout.capacity)

    @property
    def oldest_stamp(self):
        """Stamp of the oldest stored step (the same in every lane)."""
        return self.added - self.count

    def logical(self, t):
        """Age rank of physical slot(s) ``t`` (see :func:`logical`)."""
        return logical(t, self.cursor, self.count, self.layout.capacity)

    def physical(self, rank):
        """Physical slot of age rank(s) ``rank`` (see :func:`physical`)."""
        return physical(rank, self.cursor, self.count, self.layout.capacity)

    def stamp(self, t):
        """Stamp of physical slot(s) ``t`` (meaningful for written slots ``t < count``)."""
        return self.oldest_stamp + self.logical(t)

    def slot(self, stamp):
        """Physical slot of the stored step with stamp ``stamp``."""
        return self.physical(stamp - self.oldest_stamp)

    def written(self, index: tuple):
        """Bool: ``index = (*lane_idx, t)`` (int arrays of one shape) is a written slot in range."""
        t = index[-1]
        ok = (t >= 0) & (t < self.count)
        for i, d in zip(index[:-1], self.layout.lanes):
            ok = ok & (i >= 0) & (i < d)
        return ok

    def flat(self, index: tuple):
        """Row-major flat position of ``index = (*lane_idx, t)`` in ``[*lanes, capacity]``."""
        return flat_index(index, self.layout.lanes, self.layout.capacity)

    def unflatten(self, flat) -> tuple:
        """Inverse of :meth:`flat`."""
        return unflatten_index(flat, self.layout.lanes, self.layout.capacity)

    def lane_slots(self, positions):
        """Flat positions ``[n_lanes * t]`` of time slots ``positions`` (``[t]``: the same slots
        in every lane; ``[*lanes, t]``: each lane's own, as ``MaxValueWriter`` gives with lanes),
        lane-major, and whether each is a real slot (``< capacity``; writers drop the others)."""
        cap, n = self.layout.capacity, self.layout.n_lanes
        if positions.ndim > 1:
            per_lane = positions.reshape(n, -1)
        else:
            per_lane = jnp.broadcast_to(positions, (n, positions.shape[0]))
        flat = (jnp.arange(n, dtype=jnp.int32)[:, None] * cap + per_lane).reshape(-1)
        return flat, (per_lane < cap).reshape(-1)


def write_positions(cursor, t: int, capacity: int):
    """Physical time slots for a write of ``t`` steps at ``cursor``.

    Returns ``(positions, skip, new_cursor)``: when ``t > capacity`` only the last
    ``capacity`` steps can survive, so the first ``skip = t - capacity`` steps of the data are
    dropped (statically) and ``positions`` has ``min(t, capacity)`` unique entries.
    """
    skip = max(t - capacity, 0)
    n = t - skip
    start = (cursor + skip) % capacity
    positions = (start + jnp.arange(n, dtype=jnp.int32)) % capacity
    return positions, skip, (start + n) % capacity


def oldest(cursor, count, capacity: int):
    """Physical slot of the oldest step (``cursor`` once full, ``0`` before)."""
    return jnp.where(count >= capacity, cursor, 0)


def logical(t, cursor, count, capacity: int):
    """Age rank of physical slot ``t``: 0 for the oldest step, ``count - 1`` for the newest."""
    return (t - oldest(cursor, count, capacity)) % capacity


def physical(rank, cursor, count, capacity: int):
    """Inverse of :func:`logical`: the physical slot of age rank ``rank``."""
    return (oldest(cursor, count, capacity) + rank) % capacity


def physical_near(rank, cursor, count, capacity: int):
    """:func:`physical` for ``0 <= rank < capacity`` (e.g. any age rank of a stored step), without
    a modulo on CPU (``rlbuf._xla.wrap_once``)."""
    return _xla.wrap_once(oldest(cursor, count, capacity) + rank, capacity)


def window_fits(t, n, cursor, count, capacity: int):
    """True where the ``n`` steps starting at physical slot ``t`` are all written and
    contiguous in time (they do not cross the write head)."""
    return (t < count) & (logical(t, cursor, count, capacity) + n <= count)


def flat_index(index: tuple, lanes: tuple, capacity: int):
    """Row-major flat position of ``(*lane_idx, t)`` in a ``[*lanes, capacity]`` array."""
    dims = (*lanes, capacity)
    flat = index[-1]
    stride = capacity
    for i in range(len(lanes) - 1, -1, -1):
        flat = flat + index[i] * stride
        stride *= dims[i]
    return flat


def unflatten_index(flat, lanes: tuple, capacity: int) -> tuple:
    """Inverse of :func:`flat_index`: a tuple ``(*lane_idx, t)`` of int32 arrays."""
    if not lanes:
        return (flat,)
    return tuple(jnp.unravel_index(flat, (*lanes, capacity)))


def lane_index(lane_flat, lanes: tuple) -> tuple:
    """A flat lane number in ``[0, prod(lanes))`` as a tuple of per-dim lane indices."""
    if len(lanes) == 1:
        return (lane_flat,)
    return tuple(jnp.unravel_index(lane_flat, lanes))


def item_index(item, count, lanes: tuple) -> tuple:
    """Item number ``item`` in ``[0, n_lanes * count)`` (lane-major: lane ``item // count``,
    slot ``item % count``) as a tuple ``(*lane_idx, t)``; ``count`` must be >= 1.

    One truncating division (exact for ``item >= 0``) instead of jnp's floor ``//`` and ``%``:
    XLA:CPU fuses the index math into every gather and integer division does not vectorize,
    so the floor pair made uniform sampling ~2x slower than a bare ``randint`` + ``take``.
    """
    if not lanes:
        return (item,)
    item = jnp.asarray(item)
    count = jnp.asarray(count, item.dtype)
    lane = jax.lax.div(item, count)
    return (*lane_index(lane, lanes), item - lane * count)


def n_lanes(lanes: tuple) -> int:
    return int(np.prod(lanes, dtype=np.int64)) if lanes else 1
