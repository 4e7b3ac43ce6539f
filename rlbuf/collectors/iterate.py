"""``iterate``: TorchRL's ``for batch in collector`` protocol over one jitted ``collect``."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from rlbuf.collectors.protocols import CollectorLike, require_collector


class CollectorIterator:
    """Iterates batches of a collector (see :func:`iterate`).

    Attributes:
        state: the current collector state (read it to checkpoint; assign a restored one to
            resume).
        policy_params: the parameters used for the next batch.
        policy_version: the version stamped on the next batch (None: batches are not stamped).
        frames: frames yielded so far by this iterator.
    """

    def __init__(self, collector: CollectorLike, key, policy_params=None, *, total_frames=-1, progress=False,
                 policy_version: int | None = None):
        require_collector(collector, "iterate")
        self.collector = collector
        self.policy_params = policy_params
        self.policy_version = None if policy_version is None else int(policy_version)
        fpb = int(collector.frames_per_batch)
        if total_frames is None or total_frames < 0:
            self._num_batches = None
        else:
            # TorchRL rounds total_frames up to whole batches
            self._num_batches = math.ceil(total_frames / fpb)
        self.total_frames = -1 if self._num_batches is None else self._num_batches * fpb
        # compiled once, reused for every batch (a HostCollector steps host envs: not jittable)
        jittable = bool(collector.jittable)
        self._collect = jax.jit(collector.collect) if jittable else collector.collect
        self.state = (jax.jit(collector.init) if jittable else collector.init)(key)
        self.frames = 0
        self._batches = 0
        self._pbar = None
        if progress:
            from tqdm.auto import tqdm

            self._pbar = tqdm(
                total=None if self._num_batches is None else self.total_frames,
                unit="frames", unit_scale=True, desc="collect",
            )

    def __len__(self) -> int:
        if self._num_batches is None:
            raise TypeError("len() of an endless iterator (total_frames=-1)")
        return self._num_batches

    def __iter__(self):
        return self

    def __next__(self):
        if self._num_batches is not None and self._batches >= self._num_batches:
            self.close()
            raise StopIteration
        if self.policy_version is None:
            self.state, batch = self._collect(self.state, self.policy_params)
        else:  # an int32 array: a new version does not recompile
            version = jnp.asarray(self.policy_version, jnp.int32)
            self.state, batch = self._collect(self.state, self.policy_params, policy_version=version)
        self._batches += 1
        n = int(self.collector.frames_per_batch)
        self.frames += n
        if self._pbar is not None:
            self._pbar.update(n)
        return batch

    def update_policy_params(self, policy_params: Any) -> None:
        """Use ``policy_params`` from the next batch on (TorchRL's ``update_policy_weights_``);
        they must keep the same shapes and dtypes, or ``collect`` recompiles. With versions
        (``iterate(..., policy_version=v)``) the version increments."""
        self.policy_params = policy_params
        if self.policy_version is not None:
            self.policy_version += 1

    update_policy_weights_ = update_policy_params

    def close(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None


def iterate(collector: CollectorLike, key: jax.Array, policy_params: Any = None, *, total_frames: int = -1,
            progress: bool = False, policy_version: int | None = None) -> CollectorIterator:
    """Iterate ``collector``'s batches like TorchRL: ``for batch in iterate(c, key, params)``.

    ``collector.init(key)`` and a jitted ``collector.collect`` (compiled once) drive the
    iteration. ``total_frames=-1`` never stops; otherwise it is rounded up to whole batches and
    ``len()`` is the number of batches. ``progress=True`` shows a tqdm bar in frames/s. The
    iterator exposes ``.state`` (checkpoint it / assign it) and ``update_policy_params``.

    ``collector``: anything implementing :class:`rlbuf.collectors.protocols.CollectorLike`
    (``jittable`` says whether ``init``/``collect`` are compiled). ``policy_version=v``: every
    batch holds the version of its parameters at ``("collector", "policy_version")`` (``v``
    first, incremented by each ``update_policy_params``); None (default) stores none.
    """
    return CollectorIterator(collector, key, policy_params, total_frames=total_frames,
                             progress=progress, policy_version=policy_version)
