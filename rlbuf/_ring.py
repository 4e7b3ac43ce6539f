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

Sizes: time indices are int32, so a lane holds at most ``MAX_STEPS = 2**31 - 1`` steps
(``rlbuf.storages.Storage.layout`` refuses more, naming the limit); the arithmetic here never
forms a sum past ``2 * capacity`` (wraps are compare-and-subtract, see :func:`add_mod`), so it
is exact up to that limit. The number of items ``n_lanes * capacity`` may pass ``2**31``:
storages gather by ``(lane, t)``, never by one flat int32 position; only :func:`flat_index`
(prioritized samplers' flat trees) needs ``n_lanes * capacity < 2**31`` and checks it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _xla

#: Most time steps one lane can hold: time indices are int32.
MAX_STEPS = 2**31 - 1
#: Most items (over all lanes) a flat int32 position can address (:func:`flat_index`).
MAX_FLAT = 2**31 - 1


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
        check_flat(self.layout.lanes, cap, "Ring.lane_slots")
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
    start = add_mod(cursor, skip % capacity, capacity)
    positions = add_mod(start, jnp.arange(n, dtype=jnp.int32), capacity)
    return positions, skip, add_mod(start, n, capacity)


def add_mod(a, b, capacity: int):
    """``(a + b) % capacity`` for ``0 <= a, b <= capacity`` without forming ``a + b``: it may
    pass the int32 range when ``capacity`` nears ``2**31`` (compare-and-subtract, no division)."""
    room = capacity - a  # >= 0, fits
    return jnp.where(b >= room, b - room, a + b)


def add_count(count, n, capacity: int):
    """``min(count + n, capacity)`` for ``0 <= count, n`` without forming a sum past int32."""
    return jnp.where(n >= capacity - count, capacity, count + n)


def oldest(cursor, count, capacity: int):
    """Physical slot of the oldest step (``cursor`` once full, ``0`` before)."""
    return jnp.where(count >= capacity, cursor, 0)


def logical(t, cursor, count, capacity: int):
    """Age rank of physical slot ``t``: 0 for the oldest step, ``count - 1`` for the newest."""
    return (t - oldest(cursor, count, capacity)) % capacity


def physical(rank, cursor, count, capacity: int):
    """Inverse of :func:`logical`: the physical slot of age rank ``rank`` (any int32 rank). Near
    ``capacity = 2**31`` the sum is formed in ``(-capacity, capacity)`` instead, so it cannot
    overflow (static choice: one more modulo)."""
    if capacity > MAX_STEPS // 2:
        return (rank % capacity - (capacity - oldest(cursor, count, capacity))) % capacity
    return (oldest(cursor, count, capacity) + rank) % capacity


def physical_near(rank, cursor, count, capacity: int):
    """:func:`physical` for ``0 <= rank < capacity`` (e.g. any age rank of a stored step), without
    a modulo on CPU (``rlbuf._xla.wrap_once``). Near ``capacity = 2**31`` the sum would
    overflow int32: then the overflow-safe :func:`add_mod` (static choice)."""
    if capacity > MAX_STEPS // 2:
        return add_mod(oldest(cursor, count, capacity), rank, capacity)
    return _xla.wrap_once(oldest(cursor, count, capacity) + rank, capacity)


def window_fits(t, n, cursor, count, capacity: int):
    """True where the ``n`` steps starting at physical slot ``t`` are all written and
    contiguous in time (they do not cross the write head)."""
    return (t < count) & (logical(t, cursor, count, capacity) <= count - n)


def flat_index(index: tuple, lanes: tuple, capacity: int):
    """Row-major flat position of ``(*lane_idx, t)`` in a ``[*lanes, capacity]`` array (int32:
    refuses, at trace time, arrays of ``2**31`` positions or more, see :func:`check_flat`)."""
    check_flat(lanes, capacity, "flat_index")
    dims = (*lanes, capacity)
    flat = index[-1]
    stride = capacity
    for i in range(len(lanes) - 1, -1, -1):
        flat = flat + index[i] * stride
        stride *= dims[i]
    return flat


def check_flat(lanes: tuple, capacity: int, who: str) -> None:
    """Raise if ``[*lanes, capacity]`` has more positions than an int32 flat index addresses."""
    size = n_lanes(lanes) * capacity
    if size > MAX_FLAT:
        raise ValueError(
            f"{who}: {size} positions ({n_lanes(lanes)} lanes x {capacity} steps) cannot be addressed "
            f"by one int32 flat index (at most 2**31 - 1 = {MAX_FLAT})"
        )


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
