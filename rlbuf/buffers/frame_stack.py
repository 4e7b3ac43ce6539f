"""``FrameStack``: single frames stored, stacks of the last ``num_frames`` built at sample time.

``ReplayBuffer(..., frame_stack=FrameStack(4, keys=("observation",), axis=-1))`` stores each
frame once; every sampled item (flat ``[N]`` or slices ``[S, L]``) gets, for each key ``k``,
the frames of steps ``t - num_frames + 1 .. t`` of its own trajectory stacked along a new
axis ``axis`` of the frame (``[84, 84]`` frames, ``axis=-1``: ``[84, 84, 4]``), and
``("next", k)`` (when stored, or rebuilt by ``compact_next``) the stack of steps
``t - num_frames + 2 .. t`` followed by the item's next observation.

Frames before the trajectory's start repeat its first frame (gymnasium's
``FrameStackObservation(padding_type="reset")``, Dopamine, TorchRL's ``CatFrames``). Step
``s`` continues into ``s + 1`` unless

- the trajectory ids differ (``traj_key``; by default ``("collector", "traj_ids")`` or
  ``"episode"`` when stored, the slice samplers' order): this sees every start, including a
  ``reset_at_each_iter`` batch that begins a new trajectory without a done flag;
- ``("next", "done")`` or ``("next", "truncated")`` is True at ``s``;
- or the storage reports a break there (``Storage.breaks``: with ``compact_next``, every
  step whose next observation is not the following stored one, e.g. the cut at the end of a
  ``reset_at_each_iter`` batch).

Without trajectory ids only flagged ends (and ``compact_next``'s breaks) are seen: a cut that
no flag marks is invisible (the stack then holds frames of the previous trajectory), and so is,
to ``compact_next``, an episode whose final observation equals the next reset observation
(a value comparison is not a boundary); ``init`` warns when neither ids nor flags are stored. The walk back
never leaves the stored steps of the lane: if the trajectory's first steps were overwritten,
its oldest stored frame is repeated (never a frame of a slot overwritten since).

``FrameStack`` is a sample-time stage (``rlbuf.buffers.stages``): ``frame_stack=FrameStack(...)`` puts it
first in the buffer's chain; it may also be placed anywhere in ``transform=(...)``, before
stages that change the stacked keys' shapes.

Cost: ``num_frames - 1`` extra frame gathers per item and key (the observation and next
observation of the item are the buffer's own gather), plus one flag gather per offset.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax.numpy as jnp

from rlbuf import _tree
from rlbuf.buffers.stages import SampleContext

FLAGS = (("next", "done"), ("next", "truncated"))
#: Trajectory-id keys tried in order when ``traj_key`` is not given (the slice samplers' order).
AUTO_TRAJ_KEYS = (("collector", "traj_ids"), ("episode",))


@dataclasses.dataclass(frozen=True)
class FrameStack:
    """Stack the last ``num_frames`` frames of ``keys`` at sample time (see module docstring).

    Args:
      num_frames: frames per stack (``>= 1``).
      keys: stored keys holding single frames (strings, tuples for nested keys).
      axis: where the new stack axis goes in each frame's shape (``-1``: last; ``0``: first).
      traj_key: stored trajectory ids (any int leaf, one per step; trailing dims compared
        whole); ``None``: ``("collector", "traj_ids")``, then ``"episode"``, if stored.
    """

    num_frames: int
    keys: tuple = ("observation",)
    axis: int = -1
    traj_key: Any = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"FrameStack: num_frames must be an int >= 1, got {self.num_frames!r}")
        if isinstance(self.keys, str) or not self.keys:
            raise ValueError(f"FrameStack: keys must be a non-empty sequence of keys, got {self.keys!r}")
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"FrameStack: axis must be an int, got {self.axis!r}")
        if self.traj_key is not None and not isinstance(self.traj_key, (str, tuple)):
            raise ValueError(f"FrameStack: traj_key must be a key (a string, a tuple for nested keys), "
                             f"got {self.traj_key!r}")

    @property
    def _keys(self) -> tuple:
        return tuple(_tree.as_tuple(k) for k in self.keys)

    def _traj_key(self, layout):
        """The stored trajectory-id key, or ``None``."""
        if self.traj_key is not None:
            return _tree.as_tuple(self.traj_key)
        stored = set(layout.keys())
        return next((k for k in AUTO_TRAJ_KEYS if k in stored), None)

    def check(self, layout, storage=None) -> None:
        """Raise at ``init`` if a key is not stored or the axis does not fit its frames; warn
        when no boundary information is stored (see the module docstring)."""
        if self.traj_key is not None:
            layout.spec(self.traj_key)  # raises naming the key
        elif self._traj_key(layout) is None and not any(f in layout.keys() for f in FLAGS):
            # compact_next's breaks are not enough: an episode whose final observation equals the
            # next reset observation leaves no break (a value comparison is not a boundary).
            seen = " (compact_next's breaks miss an episode whose final observation equals the next " \
                "reset observation)" if storage is not None and storage.reports_breaks else ""
            warnings.warn(
                "FrameStack: no trajectory ids (traj_key, ('collector', 'traj_ids'), 'episode') nor "
                "('next', 'done') / ('next', 'truncated') flags are stored: stacks cannot see every "
                f"trajectory start and may hold frames of the previous trajectory{seen}; store "
                "('collector', 'traj_ids') or the done flags", stacklevel=4)
        for k in self._keys:
            shape, _ = layout.spec(k)  # raises naming the key
            if not -len(shape) - 1 <= self.axis <= len(shape):
                raise ValueError(
                    f"FrameStack: axis={self.axis} is out of range for key {_tree.key_str(k)} with frames "
                    f"of shape {shape}"
                )

    def _place(self, x, n_batch: int):
        """``[*S, K, *frame]`` -> the stack axis moved to ``axis`` of the frame."""
        ax = self.axis if self.axis < 0 else n_batch + self.axis
        return jnp.moveaxis(x, n_batch, ax)

    def apply(self, batch, ctx: SampleContext):
        """``batch`` (gathered at ``ctx.index``) with stacked frames; masked items (zeros) stay
        zeros: their stack repeats their own frame."""
        storage, ring, sstorage, index, info = ctx.storage, ctx.ring, ctx.data, ctx.index, ctx.info
        layout = ring.layout
        K = self.num_frames
        t = index[-1]
        n_batch = t.ndim
        if K == 1:
            out = batch
            for k in self._keys:
                out = _tree.set_in(out, k, self._place(jnp.expand_dims(_tree.get(batch, k), n_batch), n_batch))
                nk = ("next", *k)
                if _tree.has(batch, nk):
                    out = _tree.set_in(out, nk, self._place(jnp.expand_dims(_tree.get(batch, nk), n_batch), n_batch))
            return out
        # Slots t-1 .. t-(K-1) of the item's lane, [*S, K-1] (one gather each for flags and frames).
        j = jnp.arange(1, K, dtype=t.dtype)
        s = t[..., None] - j
        s = jnp.where(s < 0, s + ring.capacity, s)
        lanes = tuple(jnp.broadcast_to(i[..., None], s.shape) for i in index[:-1])
        idx = (*lanes, s)
        brk = storage.breaks(layout, sstorage, idx)
        brk = jnp.zeros(s.shape, bool) if brk is None else brk
        flags = [f for f in FLAGS if f in layout.keys()]
        if flags:
            prev = storage.gather(layout, sstorage, idx)  # only the flags survive jit's DCE
            for f in flags:
                x = _tree.get(prev, f)
                brk = brk | jnp.any(x.reshape(*s.shape, -1) != 0, axis=-1)
        tk = self._traj_key(layout)
        if tk is not None:  # slot t-j is a break if its id differs from slot t-j+1's
            s0 = jnp.concatenate([t[..., None], s], axis=-1)  # [*S, K]: t, t-1, .., t-K+1
            l0 = tuple(jnp.broadcast_to(i[..., None], s0.shape) for i in index[:-1])
            ids = _tree.get(storage.gather(layout, sstorage, (*l0, s0)), tk)
            ids = ids.reshape(*s0.shape, -1)
            brk = brk | jnp.any(ids[..., 1:, :] != ids[..., :-1, :], axis=-1)
        ok = (j <= ring.logical(t)[..., None]) & ~brk
        if "mask" in info:  # a masked item (zeros) is a trajectory of its own: its frame repeated
            ok = ok & info["mask"][..., None]
        n_cont = jnp.sum(jnp.cumprod(ok, axis=-1, dtype=jnp.int32), axis=-1)  # steps back in the trajectory
        first = jnp.take_along_axis(s, jnp.maximum(n_cont - 1, 0)[..., None], axis=-1)[..., 0]
        first = jnp.where(n_cont == 0, t, first)
        src = jnp.where(j <= n_cont[..., None], s, first[..., None])[..., ::-1]  # oldest first
        old = storage.gather(layout, sstorage, (*lanes, src))  # [*S, K-1, ...]
        alone = (n_cont == 0)[..., None]  # [*S, 1]: the item's own frame (as in the batch) repeated
        out = batch
        for k in self._keys:
            own = jnp.expand_dims(_tree.get(batch, k), n_batch)
            older = _tree.get(old, k)
            older = jnp.where(alone.reshape(alone.shape + (1,) * (older.ndim - alone.ndim)), own, older)
            frames = jnp.concatenate([older, own], axis=n_batch)
            out = _tree.set_in(out, k, self._place(frames, n_batch))
            nk = ("next", *k)
            if _tree.has(batch, nk):
                nxt = jnp.concatenate([frames[(slice(None),) * n_batch + (slice(1, None),)],
                                       jnp.expand_dims(_tree.get(batch, nk), n_batch)], axis=n_batch)
                out = _tree.set_in(out, nk, self._place(nxt, n_batch))
        return out
