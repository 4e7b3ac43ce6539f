"""``MultiAsyncCollector`` (alias ``MultiaSyncDataCollector``): workers collect concurrently,
each a host thread driving a jitted ``collect`` on its own device, and batches are yielded as
``(worker_id, batch)`` in the order they finish.

Replay without interrupted trajectories: TorchRL's async collector writes whichever worker
finished into one shared buffer, so a stored trajectory can be cut by another worker's steps.
Here each worker's batch is ``[B, T, ...]`` (``[T, ...]`` for single-env workers) and goes
into that worker's own lanes with :meth:`rlbuf.sharding.PerWorkerReplayBuffer.add_worker`:

    collector = MultiAsyncCollector([env] * W, policy, frames_per_batch=B * T, num_envs=B,
                                    storing_device=jax.devices()[0])
    rb = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(M, ndim=2),
                                            sampler=SliceSampler(...), batch_size=S), W)
    it = collector.iterate(key, params, total_frames=F)
    add = jax.jit(rb.add_worker, donate_argnums=0)
    for worker_id, batch in it:
        state = add(state, worker_id, batch)     # only worker_id's rings move
        ...
        it.update_policy_params(new_params)      # every worker's next batch uses them
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from rlbuf.collectors.multi import MultiSyncCollector
from rlbuf.collectors.sharded import Split, split_collector


@dataclasses.dataclass(frozen=True, eq=False)
class MultiAsyncCollector:
    """TorchRL's ``MultiaSyncDataCollector``: ``W`` workers of ``num_envs`` envs (or one env) that
    collect concurrently; every yielded batch is one worker's ``frames_per_batch`` frames.

    Args:
        envs: ``W`` envs of one type (per-worker differences in ``env_params``).
        policy: as for :class:`rlbuf.collectors.collector.Collector`.
        frames_per_batch: frames of one yielded batch (one worker's), as in TorchRL;
            ``T = frames_per_batch // num_envs``.
        num_envs: envs per worker (``None``: one env, batches ``[T, ...]``; else ``[B, T, ...]``).
        env_params: shared, a list of ``W`` sets, or leaves with a leading ``[W]`` / ``[W, B]``
            axis (as for ``MultiSyncCollector``).
        devices: devices the workers run on (worker ``w`` on ``devices[w % len(devices)]``);
            default ``jax.local_devices()``.
        storing_device: device batches are moved to before being yielded (e.g. the replay
            buffer's); ``None`` leaves them on the worker's device.
        max_frames_per_traj, reset_at_each_iter, postproc: as for ``Collector``
            (``postproc`` runs on the worker's device, on its batch).
        init_random_frames: random actions while the frames collected so far (over all
            workers) are fewer; each worker applies ``ceil(init_random_frames / W)`` to its own
            frames, as workers do not communicate.
        policy_carry, store_carry: as for ``Collector``; each worker's carry lives in its own
            state, and ``init_fn`` gets the number of envs of one worker (``B``, or 1).

    Trajectory ids are unique across workers without communication: worker ``w``'s env ``j``
    starts with id ``w * B + j``; later ids are ``W * B + k * W + w`` for its ``k``-th reset
    (see :func:`rlbuf.collectors._counters.global_traj_ids`). Iterate with :meth:`iterate`; ``init``/
    ``collect_worker`` are the pure pieces it drives (usable under ``jit``).
    """

    envs: Sequence[Any]
    policy: Callable | None = None
    _: dataclasses.KW_ONLY
    frames_per_batch: int
    num_envs: int | None = None
    env_params: Any = None
    devices: Sequence[Any] | None = None
    storing_device: Any = None
    max_frames_per_traj: int | None = None
    init_random_frames: int = 0
    reset_at_each_iter: bool = False
    postproc: Callable | None = None

    policy_carry: Callable | None = None
    store_carry: bool = False

    def __post_init__(self):
        self._split  # noqa: B018 -- builds (and checks) the workers' collectors now

    @functools.cached_property
    def _W(self) -> int:
        return len(tuple(self.envs))

    @functools.cached_property
    def _sync(self) -> MultiSyncCollector:
        """All workers as one synchronous collector (``init`` resets envs exactly as it does)."""
        return MultiSyncCollector(
            self.envs,
            self.policy,
            frames_per_batch=self.frames_per_batch * self._W,
            num_envs=self.num_envs,
            env_params=self.env_params,
            max_frames_per_traj=self.max_frames_per_traj,
            init_random_frames=self.init_random_frames,
            reset_at_each_iter=self.reset_at_each_iter,
            policy_carry=self.policy_carry,
            store_carry=self.store_carry,
        )

    @functools.cached_property
    def _split(self) -> Split:
        return split_collector(self._sync, self._W, "MultiAsyncCollector")

    @functools.cached_property
    def _collect(self):
        return jax.jit(self.collect_worker)

    @property
    def num_workers(self) -> int:
        return self._W

    @property
    def batch_shape(self) -> tuple:
        """Leading dims of one worker's batch: ``(T,)`` or ``(B, T)``."""
        return self._split.local.batch_shape[1:]

    def init(self, key: jax.Array):
        """All workers' states stacked on a leading ``[W]`` axis (envs reset as
        ``MultiSyncCollector(envs, ...).init(key)`` would)."""
        return jax.jit(self._split.init, static_argnums=0)(self._sync, key)

    def collect_worker(self, state, policy_params: Any, worker_id):
        """One batch of worker ``worker_id`` from its state (``state[w]`` of :meth:`init`):
        ``(state, batch)`` with ``batch`` leaves ``[B, T, ...]`` / ``[T, ...]`` and global ids."""
        # one program for every worker: its env params (host constants) are picked by worker_id
        state, batch = self._split.collect(state, policy_params, worker_id)
        batch = jax.tree_util.tree_map(lambda x: x[0], batch)  # the local collector has 1 worker
        if self.postproc is not None:
            batch = self.postproc(batch)
        return state, batch

    def iterate(self, key: jax.Array, policy_params: Any = None, *, total_frames: int = -1) -> "AsyncIterator":
        """Start the workers; iterate ``(worker_id, batch)`` until ``total_frames`` (rounded up
        to whole batches; ``-1``: forever). Use as a context manager or call ``close()``."""
        return AsyncIterator(self, key, policy_params, total_frames)

    __call__ = iterate


MultiaSyncDataCollector = MultiAsyncCollector


class AsyncIterator:
    """Yields ``(worker_id, batch)`` as workers finish (see :class:`MultiAsyncCollector`).

    As in TorchRL, a worker starts its next batch as soon as its previous one is handed out
    (before the caller processes it), with the policy parameters current at that moment.

    Attributes: ``states`` (per-worker collector states, on their devices), ``frames``
    (frames yielded), ``batches_per_worker`` (list of counts).
    """

    def __init__(self, collector: MultiAsyncCollector, key, policy_params, total_frames: int):
        self.collector = collector
        W = collector.num_workers
        devices = list(collector.devices) if collector.devices is not None else jax.local_devices()
        self._devices = [devices[w % len(devices)] for w in range(W)]
        stacked = collector.init(key)
        self.states = [jax.device_put(jax.tree_util.tree_map(lambda x: x[w], stacked), self._devices[w])
                       for w in range(W)]
        self._lock = threading.Lock()
        self._params = policy_params
        self._params_on: dict = {}
        fpb = collector.frames_per_batch
        self._num_batches = None if total_frames is None or total_frames < 0 else math.ceil(total_frames / fpb)
        self.frames = 0
        self._yielded = 0
        self.batches_per_worker = [0] * W
        self._queue: queue.Queue = queue.Queue()
        self._go = [threading.Event() for _ in range(W)]
        self._stop = False
        self._threads = [threading.Thread(target=self._work, args=(w,), daemon=True) for w in range(W)]
        for w, t in enumerate(self._threads):
            t.start()
            self._go[w].set()

    def _params_for(self, w):
        dev = self._devices[w]
        with self._lock:
            if dev not in self._params_on:
                self._params_on[dev] = jax.device_put(self._params, dev)
            return self._params_on[dev]

    def _work(self, w):
        c = self.collector
        wid = jax.device_put(jnp.asarray(w, jnp.int32), self._devices[w])
        while True:
            self._go[w].wait()
            self._go[w].clear()
            if self._stop:
                return
            try:
                state, batch = c._collect(self.states[w], self._params_for(w), wid)
                if c.storing_device is not None:
                    batch = jax.device_put(batch, c.storing_device)
                jax.block_until_ready(batch)
                self.states[w] = state
                self._queue.put((w, batch))
            except BaseException as e:  # surfaced in the consumer's thread
                self._queue.put((w, e))
                return

    def __iter__(self):
        return self

    def __next__(self):
        if self._num_batches is not None and self._yielded >= self._num_batches:
            self.close()
            raise StopIteration
        w, batch = self._queue.get()
        if isinstance(batch, BaseException):
            self.close()
            raise batch
        self._yielded += 1
        self.frames += self.collector.frames_per_batch
        self.batches_per_worker[w] += 1
        if self._num_batches is None or self._yielded < self._num_batches:
            self._go[w].set()  # keep working while the caller processes this batch
        return w, batch

    def update_policy_params(self, policy_params: Any) -> None:
        """Workers use ``policy_params`` from their next batch on (same shapes and dtypes)."""
        with self._lock:
            self._params = policy_params
            self._params_on = {}

    update_policy_weights_ = update_policy_params

    def close(self) -> None:
        """Stop the workers (a batch in flight is finished and dropped)."""
        self._stop = True
        for e in self._go:
            e.set()
        for t in self._threads:
            t.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
