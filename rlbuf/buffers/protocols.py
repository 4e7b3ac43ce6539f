"""What "a buffer" is: the :class:`Buffer` protocol (optax's ``GradientTransformation`` is the
model: a frozen object of pure functions over an explicit state).

``rlbuf.ReplayBuffer`` implements it; so do the group wrappers built on it
(``rlbuf.ShardedReplayBuffer``, ``rlbuf.PerWorkerReplayBuffer``) for the methods they share.
The group wrappers (``rlbuf.shard``, ``PerWorkerReplayBuffer``) and ``ReplayBufferEnsemble``
accept any object implementing :class:`SplittableBuffer`, not only ``ReplayBuffer``.
"""

from __future__ import annotations

from typing import Any, Protocol, Tuple, runtime_checkable

import jax


@runtime_checkable
class Buffer(Protocol):
    """A replay buffer as pure functions over an immutable state (all jittable).

    - ``batch_size``: items per ``sample``;
    - ``init(example) -> state``: an empty buffer for ``add`` batches like ``example`` (arrays or
      ``ShapeDtypeStruct``s, leaves ``[*lanes, T, ...]``);
    - ``add(state, data) -> state``: write a batch;
    - ``sample(state, key) -> (state, batch, info)``: draw ``batch_size`` items (leaves
      ``[batch_size, ...]`` or ``[num_slices, slice_len, ...]``); ``info["index"]`` locates them,
      ``info["mask"]`` (when present) marks real items;
    - ``can_sample(state) -> bool []``: whether ``sample`` returns a full batch of real data;
    - ``num_stored(state) -> int32 []``: transitions stored.
    """

    @property
    def batch_size(self) -> int: ...  # read-only: a frozen dataclass's field satisfies it

    def init(self, example: Any) -> Any: ...

    def add(self, state: Any, data: Any) -> Any: ...

    def sample(self, state: Any, key: jax.Array) -> Tuple[Any, Any, dict]: ...

    def can_sample(self, state: Any) -> jax.Array: ...

    def num_stored(self, state: Any) -> jax.Array: ...


@runtime_checkable
class SplittableBuffer(Buffer, Protocol):
    """A :class:`Buffer` that can run as ``n`` lane groups (``rlbuf.shard``,
    ``PerWorkerReplayBuffer``) and inside ``ReplayBufferEnsemble``. Its state has a static
    ``layout`` (``rlbuf.storages.base.Layout``) and int32 ``count`` (time slots stored per lane).

    - ``ndim``: batch dims of ``add`` data (lanes, then time);
    - ``split(n_groups, who) -> SplittableBuffer``: the buffer each group runs (``max_size`` and
      ``batch_size`` divided by ``n_groups``); raise ``ValueError`` naming ``who`` if it cannot;
    - ``stored(data, who) -> data``: ``data`` as ``add`` keeps it (key selection, nesting);
      idempotent;
    - ``check(layout, data) -> T``: validate an ``add`` batch against ``layout`` (errors name
      the key) and return its time length;
    - ``with_batch_size(n) -> SplittableBuffer``: the same buffer drawing ``n`` items per sample;
    - ``update_priority(state, index, priority) -> state``: for prioritized samplers (others
      raise ``TypeError``).
    """

    @property
    def ndim(self) -> int: ...

    def split(self, n_groups: int, who: str = ...) -> "SplittableBuffer": ...

    def stored(self, data: Any, who: str = ...) -> Any: ...

    def check(self, layout: Any, data: Any) -> int: ...

    def with_batch_size(self, batch_size: int) -> "SplittableBuffer": ...

    def update_priority(self, state: Any, index: Any, priority: jax.Array) -> Any: ...
