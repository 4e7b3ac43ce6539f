"""``MultiAsyncCollector`` (alias ``MultiaSyncDataCollector``): workers collect concurrently,
each a host thread driving a jitted ``collect`` on its own device, and batches are yielded as
``(worker_id, batch)`` in the order they finish.

Replay without interrupted trajectories: TorchRL's async collector writes whichever worker
finished into one shared buffer, so a stored trajectory can be cut by another worker's steps.
Here each worker's batch is ``[B, T, ...]`` (``[T, ...]`` for single-env workers) and goes
into that worker's own lanes with :meth:`rlbuf.scaling.sharding.PerWorkerReplayBuffer.add_worker`:

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
import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from rlbuf.collectors._groups import CollectorGroups
from rlbuf.collectors.multi import MultiSyncCollector
from rlbuf.collectors.options import CollectorOptions


@dataclasses.dataclass(frozen=True, eq=False)
class MultiAsyncCollector(CollectorOptions):
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
        max_frames_per_traj, init_random_frames, reset_at_each_iter, postproc, policy_carry,
            store_carry: the shared options (:class:`rlbuf.collectors.options.CollectorOptions`),
            handed whole to the workers. ``postproc`` runs on the worker's device, on its batch.
            ``init_random_frames``: random actions while the frames collected so far (over all
            workers) are fewer; each worker applies ``ceil(init_random_frames / W)`` to its own
            frames, as workers do not communicate. ``policy_carry``: each worker's carry lives
            in its own state, and ``init_fn`` gets the number of envs of one worker (``B``, or 1).

    Trajectory ids are unique across workers without communication: worker ``w``'s env ``j``
    starts with id ``w * B + j``; later ids are ``W * B + k * W + w`` for its ``k``-th reset
    (see :func:`rlbuf.collectors._counters.global_traj_ids`). Iterate with :meth:`iterate`; ``init``/
    ``collect_worker`` are the pure pieces it drives (usable under ``jit``).
    """

    envs: Sequence[Any]
    policy: Callable | None = None
    _: dataclasses.KW_ONLY
    num_envs: int | None = None
    env_params: Any = None
    devices: Sequence[Any] | None = None
    storing_device: Any = None

    __eq__ = object.__eq__  # hashed by identity (jit caches on it), not by its options' values
    __hash__ = object.__hash__

    def __post_init__(self):
        super().__post_init__()
        self._split  # noqa: B018 -- builds (and checks) the workers' collectors now

    @functools.cached_property
    def _W(self) -> int:
        return len(tuple(self.envs))

    @functools.cached_property
    def _sync(self) -> MultiSyncCollector:
        """All workers as one synchronous collector (``init`` resets envs exactly as it does)."""
        return MultiSyncCollector(self.envs, self.policy, num_envs=self.num_envs, env_params=self.env_params,
                                  **self.option_kwargs(frames_per_batch=self.frames_per_batch * self._W,
                                                       postproc=None))

    @functools.cached_property
    def _split(self) -> CollectorGroups:
        return self._sync.split(self._W, "MultiAsyncCollector")

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
        return jax.jit(self._split.init)(key)

    def collect_worker(self, state, policy_params: Any, worker_id, policy_version: Any = None):
        """One batch of worker ``worker_id`` from its state (``state[w]`` of :meth:`init`):
        ``(state, batch)`` with ``batch`` leaves ``[B, T, ...]`` / ``[T, ...]`` and global ids;
        with ``policy_version`` (int scalar, may be traced) stored at
        ``("collector", "policy_version")``."""
        # one program for every worker: its env params (host constants) are picked by worker_id
        state, batch = self._split.collect(state, policy_params, worker_id, policy_version=policy_version)
        batch = jax.tree_util.tree_map(lambda x: x[0], batch)  # the local collector has 1 worker
        if self.postproc is not None:
            batch = self.postproc(batch)
        return state, batch

    def iterate(self, key: jax.Array, policy_params: Any = None, *, total_frames: int = -1,
                policy_version: int = 0) -> "AsyncIterator":
        """Start the workers; iterate ``(worker_id, batch)`` until ``total_frames`` (rounded up
        to whole batches; ``-1``: forever). Every batch holds the version of the parameters its
        worker used at ``("collector", "policy_version")`` (int32 ``[B, T]``): ``policy_version``
        at first, incremented by each ``update_policy_params``. Use as a context manager or call
        ``close()`` (an iterator that is dropped stops its workers too)."""
        return AsyncIterator(self, key, policy_params, total_frames, policy_version)

    __call__ = iterate


MultiaSyncDataCollector = MultiAsyncCollector


class WorkerError(RuntimeError):
    """An error raised in a :class:`MultiAsyncCollector` worker (the original is ``__cause__``).

    Attributes:
        worker: the worker's index.
    """

    def __init__(self, worker: int, device: Any, error: BaseException):
        super().__init__(f"MultiAsyncCollector worker {worker} (on {device}) raised "
                         f"{type(error).__name__}: {error}")
        self.worker = worker


THREAD_NAME = "rlbuf-async-worker"  # worker threads are named f"{THREAD_NAME}-{w}"
_CLOSED = object()  # put in the queue by close(): wakes a consumer blocked in next()


class _Shared:
    """What the workers and the iterator share. The worker threads hold this, never the
    iterator, so an iterator that is dropped can be collected (and its finalizer stop them)."""

    def __init__(self, collector, devices, states, params, version):
        self.collector = collector
        self.devices = devices
        self.states = states
        self.lock = threading.Lock()
        self.params = params
        self.version = version
        self.on_device: dict = {}
        self.queue: queue.Queue = queue.Queue()
        self.go = [threading.Event() for _ in devices]
        self.stop = False

    def params_for(self, w):
        """The current parameters on worker ``w``'s device and their version (read together:
        a batch uses one version throughout and reports it)."""
        dev = self.devices[w]
        with self.lock:
            if dev not in self.on_device:
                self.on_device[dev] = (jax.device_put(self.params, dev),
                                       jax.device_put(jnp.asarray(self.version, jnp.int32), dev))
            return self.on_device[dev]


def _work(shared: _Shared, w: int):
    c = shared.collector
    wid = jax.device_put(jnp.asarray(w, jnp.int32), shared.devices[w])
    while True:
        shared.go[w].wait()
        shared.go[w].clear()
        if shared.stop:
            return
        try:
            params, version = shared.params_for(w)
            state, batch = c._collect(shared.states[w], params, wid, version)
            if c.storing_device is not None:
                batch = jax.device_put(batch, c.storing_device)
            jax.block_until_ready(batch)
            shared.states[w] = state
            if shared.stop:  # closed meanwhile: the batch is dropped
                return
            shared.queue.put((w, batch))
        except BaseException as e:  # surfaced in the consumer's thread, naming the worker
            err = WorkerError(w, shared.devices[w], e)
            err.__cause__ = e
            shared.queue.put((w, err))
            return


def _shutdown(shared: _Shared, threads: list) -> None:
    """Stop the workers (each finishes its batch in flight, which is dropped) and wait for them."""
    shared.stop = True
    for e in shared.go:
        e.set()
    me = threading.current_thread()
    for t in threads:
        if t is not me:
            t.join()
    shared.queue.put((None, _CLOSED))


class AsyncIterator:
    """Yields ``(worker_id, batch)`` as workers finish (see :class:`MultiAsyncCollector`).

    As in TorchRL, a worker starts its next batch as soon as its previous one is handed out
    (before the caller processes it), with the policy parameters current at that moment; the
    batch carries their version at ``("collector", "policy_version")``.

    After :meth:`close` (or the end of ``total_frames``), ``next`` raises ``StopIteration``; an
    iterator that is garbage-collected stops its workers; an error in a worker is raised by
    ``next`` as a :class:`WorkerError` naming the worker (the workers are then stopped).

    Attributes: ``states`` (per-worker collector states, on their devices), ``frames``
    (frames yielded), ``batches_per_worker`` (list of counts), ``policy_version`` (the version
    the workers' next batches use).
    """

    def __init__(self, collector: MultiAsyncCollector, key, policy_params, total_frames: int,
                 policy_version: int = 0):
        self.collector = collector
        W = collector.num_workers
        devices = list(collector.devices) if collector.devices is not None else jax.local_devices()
        devices = [devices[w % len(devices)] for w in range(W)]
        stacked = collector.init(key)
        states = [jax.device_put(jax.tree_util.tree_map(lambda x: x[w], stacked), devices[w]) for w in range(W)]
        self._shared = _Shared(collector, devices, states, policy_params, int(policy_version))
        fpb = collector.frames_per_batch
        self._num_batches = None if total_frames is None or total_frames < 0 else math.ceil(total_frames / fpb)
        self.frames = 0
        self._yielded = 0
        self._closed = False
        self.batches_per_worker = [0] * W
        self._threads = [threading.Thread(target=_work, args=(self._shared, w), daemon=True, name=f"{THREAD_NAME}-{w}")
                         for w in range(W)]
        # a dropped iterator (a bare `for ... break`) stops its workers: the threads hold only _shared
        self._finalizer = weakref.finalize(self, _shutdown, self._shared, self._threads)
        for w, t in enumerate(self._threads):
            t.start()
            self._shared.go[w].set()

    @property
    def states(self) -> list:
        return self._shared.states

    @property
    def policy_version(self) -> int:
        return self._shared.version

    def __iter__(self):
        return self

    def __next__(self):
        if self._closed:
            raise StopIteration
        if self._num_batches is not None and self._yielded >= self._num_batches:
            self.close()
            raise StopIteration
        w, batch = self._shared.queue.get()
        if batch is _CLOSED:
            self._closed = True
            raise StopIteration
        if isinstance(batch, BaseException):
            self.close()
            raise batch
        self._yielded += 1
        self.frames += self.collector.frames_per_batch
        self.batches_per_worker[w] += 1
        if self._num_batches is None or self._yielded < self._num_batches:
            self._shared.go[w].set()  # keep working while the caller processes this batch
        return w, batch

    def update_policy_params(self, policy_params: Any) -> None:
        """Workers use ``policy_params`` (same shapes and dtypes) from their next batch on, and
        the version increments (a worker mid-batch finishes with the parameters it started with
        and reports their version)."""
        s = self._shared
        with s.lock:
            s.params = policy_params
            s.version += 1
            s.on_device = {}

    update_policy_weights_ = update_policy_params

    def close(self) -> None:
        """Stop the workers (a batch in flight is finished and dropped; so are batches queued and
        not yet yielded); ``next`` then raises ``StopIteration``."""
        self._closed = True
        self._finalizer()  # runs _shutdown once
        while True:  # drop what was queued
            try:
                self._shared.queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
