"""``SamplerWithoutReplacement``: epochs that visit every stored transition exactly once."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from rlbuf import _ring, _xla
from rlbuf.samplers import _consume
from rlbuf.samplers.base import Sampler


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WithoutReplacementState:
    """``perm``: ``[n_lanes * capacity]`` int32, the epoch's order over item numbers
    ``k in [0, epoch_items)`` (item ``k`` is lane ``k // epoch_count``, slot
    ``k % epoch_count``); ``pos``: items of the epoch already returned; ``epoch_items`` /
    ``epoch_count``: items / time slots stored when the epoch began; ``epoch``: epochs begun."""

    perm: jax.Array
    pos: jax.Array
    epoch_items: jax.Array
    epoch_count: jax.Array
    epoch: jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerWithoutReplacement(Sampler):
    """Draws without replacement: each epoch returns every item stored at its start once.

    An epoch is a permutation (random if ``shuffle``, storage order otherwise) of the items
    stored when it began; it lives in the buffer state with its cursor, so the sampler stays
    pure. When it runs out a new epoch starts (reshuffled with the ``sample`` key).

    - ``drop_last=False``: the epoch's last batch may be partial; its missing items are
      padding, zeroed, with ``info["mask"]`` False (shapes stay static, unlike TorchRL's
      shorter last batch). ``drop_last=True``: an epoch whose remainder is shorter than
      ``batch_size`` is abandoned and a new one begins.
    - ``can_sample`` False (empty buffer; ``drop_last=True`` with fewer stored items than
      ``batch_size``): ``sample`` returns all padding (zeros, ``info["mask"]`` False) and
      begins no epoch (TorchRL raises).
    - The buffer growing mid-epoch: items added after the epoch began wait for the next
      epoch. A slot overwritten mid-epoch is returned with its new content when its turn
      comes (slots, not values, are what an epoch visits).
    - ``consume_after_n_samples=n``: an item returned ``n`` times (over ``n`` epochs) is
      consumed: left out of later epochs and no longer counted by ``num_stored`` / ``len`` /
      ``can_sample`` until a write replaces it (TorchRL's ``consume_after_n_samples``, which
      TorchRL offers with its random sampler only; see ``rlbuf.samplers._consume``). An epoch
      visits the items live at its start. ``None``: no consumption.
    """

    drop_last: bool = False
    shuffle: bool = True
    consume_after_n_samples: Optional[int] = None
    pads = True
    redraws = False  # a redraw would consume items of the epoch: rejected items stay masked

    def __post_init__(self):
        _consume.check_n(type(self).__name__, self.consume_after_n_samples)
    def check(self, layout, batch_size: int) -> None:
        # The epoch's permutation holds int32 item numbers.
        _ring.check_flat(layout.lanes, layout.capacity, type(self).__name__)

    def init(self, layout):
        z = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers, for donation)
        s = WithoutReplacementState(
            perm=jnp.arange(layout.size, dtype=jnp.int32), pos=z(), epoch_items=z(), epoch_count=z(), epoch=z()
        )
        return s if self.consume_after_n_samples is None else _consume.init(layout, s)

    def on_write(self, ring, sstate, write, data):
        if self.consume_after_n_samples is None:
            return sstate
        return _consume.on_write(ring, sstate, write, self.consume_after_n_samples)

    def _new_epoch(self, ring, s, key, live=None):
        """A new epoch over the stored items (``live``: bool per flat slot, only those)."""
        layout = ring.layout
        n_items = ring.count * layout.n_lanes
        if self.shuffle:
            # A random permutation of all slots, stably filtered to the k < n_items ones,
            # is a uniform permutation of [0, n_items) with a static shape. (jax's permutation
            # sorts by random 32-bit keys, with rounds against ties: no randint range bias.)
            perm = jax.random.permutation(key, layout.size).astype(jnp.int32)
        else:
            perm = jnp.arange(layout.size, dtype=jnp.int32)
        out = perm >= n_items
        if live is not None:  # consume-once: leave out the consumed items (item k -> its flat slot)
            count = jnp.maximum(ring.count, 1)
            out = out | ~live[ring.flat(_ring.item_index(jnp.minimum(perm, n_items - 1), count, layout.lanes))]
            n_items = jnp.sum(~out, dtype=jnp.int32)
        if live is not None:
            perm = perm[jnp.argsort(out, stable=True)]
        elif self.shuffle:  # a full buffer (the usual case: one PPO batch) has nothing to filter: no second sort
            perm = _xla.run_at_most_once(n_items < layout.size, lambda p: p[jnp.argsort(p >= n_items, stable=True)],
                                         perm)
        return WithoutReplacementState(
            perm=perm, pos=jnp.zeros((), jnp.int32), epoch_items=n_items,
            epoch_count=ring.count, epoch=s.epoch + 1,
        )

    def sample(self, ring, s, key, batch_size: int):
        n = self.consume_after_n_samples
        if n is None:
            return self._sample(ring, s, key, batch_size, None)
        inner, index, info = self._sample(ring, s.inner, key, batch_size, s)
        s = _consume.mark(ring, dataclasses.replace(s, inner=inner), index, info["mask"], n)
        return s, index, info

    def _sample(self, ring, s, key, batch_size: int, cs):
        """The epoch logic on the sampler's own state ``s``; ``cs``: the consume-once state
        (``rlbuf.samplers._consume``) or None."""
        layout = ring.layout
        left = s.epoch_items - s.pos
        need = (left <= 0) | (left < batch_size) & self.drop_last
        # When can_sample is False (empty buffer, or drop_last with fewer items than a batch)
        # no epoch begins and the batch is all padding (TorchRL raises; shapes stay static).
        can = self._can(ring, batch_size, None if cs is None else _consume.n_live(ring, cs))
        n = self.consume_after_n_samples

        def new_epoch(c, k, *consume):  # the live items are computed only when an epoch begins
            return self._new_epoch(ring, c, k, *(_consume.live(ring, x, n) for x in consume))

        s = _xla.run_at_most_once(need & can, new_epoch, s, (key,) if cs is None else (key, cs))
        real = can | ~need  # False: no batch at all (the state is left as it was)
        k = s.pos + jnp.arange(batch_size, dtype=jnp.int32)
        mask = (k < s.epoch_items) & real
        item = s.perm[jnp.minimum(k, layout.size - 1)]
        item = jnp.where(mask, item, 0)
        count = jnp.maximum(s.epoch_count, 1)
        index = _ring.item_index(item, count, layout.lanes)
        pos = jnp.where(real, jnp.minimum(s.pos + batch_size, s.epoch_items), s.pos)
        s = dataclasses.replace(s, pos=pos)
        return s, index, {"mask": mask}

    def _can(self, ring, batch_size: int, n_items=None):
        n_items = ring.count * ring.n_lanes if n_items is None else n_items
        return n_items >= batch_size if self.drop_last else n_items > 0

    def can_sample(self, ring, sstate, batch_size: int):
        return self._can(ring, batch_size, None if self.consume_after_n_samples is None
                         else _consume.n_live(ring, sstate))
