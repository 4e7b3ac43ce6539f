"""The plug-in seams: a sampler, a writer, a storage and a sample-time stage written *here*,
against the base classes (and ``rlbuf.buffers.stages``) only, work plain, sharded (``rlbuf.shard`` on
a 1-device mesh, in-process) and per-worker (``PerWorkerReplayBuffer``) without any edit of
``replay_buffer.py`` or ``sharding.py``; and combinations that cannot work are refused at
``init``, naming both parts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from rlbuf import _ring
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.buffers.stages import SampleContext, chain
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.slice import SliceSampler
from rlbuf.scaling.sharding import PerWorkerReplayBuffer, shard
from rlbuf.storages import LazyTensorStorage, Storage
from rlbuf.writers import MaxValueWriter, WriteInfo, Writer

# ---------------------------------------------------------------------------------- the plug-ins


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RecentState:
    draws: jax.Array  # samples drawn
    seen: jax.Array  # on_write calls that saw the ring's newest step where the write put it


@dataclasses.dataclass(frozen=True)
class RecentSampler(Sampler):
    """Uniform over the ``window`` newest steps of every lane (all of them while fewer are
    stored), through the ring view only. ``groups`` counts how often it was split (to check
    that ``split`` is what the wrappers call)."""

    window: int
    groups: int = 1

    def init(self, layout):
        return RecentState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def on_write(self, ring, s, write, data):
        # The ring after the write: its newest slot is the last written position.
        ok = ring.physical(ring.count - 1) == write.positions[-1]
        return dataclasses.replace(s, seen=s.seen + ok.astype(jnp.int32))

    def sample(self, ring, s, key, batch_size):
        w = jnp.minimum(ring.count, self.window)
        k_lane, k_t = jax.random.split(key)
        lane = jax.random.randint(k_lane, (batch_size,), 0, ring.n_lanes, dtype=jnp.int32)
        back = jax.random.randint(k_t, (batch_size,), 0, jnp.maximum(w, 1), dtype=jnp.int32)
        t = ring.physical(jnp.maximum(ring.count - 1 - back, 0)).astype(jnp.int32)
        lane_idx = _ring.lane_index(lane, ring.lanes) if ring.lanes else ()
        info = {"mask": jnp.broadcast_to(ring.count > 0, (batch_size,))}
        return dataclasses.replace(s, draws=s.draws + 1), (*lane_idx, t), info

    def split(self, n_groups, *, ndim, batch_size):
        return dataclasses.replace(self, groups=self.groups * n_groups)


@dataclasses.dataclass(frozen=True)
class StrideWriter(Writer):
    """Keeps every ``stride``-th step of each batch (steps ``0, stride, ...``), round-robin. Its
    state counts the adds. It does not promise ``"time_order"`` (steps are skipped)."""

    stride: int = 2

    def init(self, layout):
        return jnp.zeros((), jnp.int32)

    def write(self, ring, adds, data):
        ax = ring.layout.ndim - 1
        data = jax.tree_util.tree_map(lambda x: jax.lax.slice_in_dim(x, 0, x.shape[ax], self.stride, axis=ax), data)
        t_len = jax.tree_util.tree_leaves(data)[0].shape[ax]
        positions, skip, new_cursor = _ring.write_positions(ring.cursor, t_len, ring.capacity)
        new_count = jnp.minimum(ring.count + positions.shape[0], ring.capacity)
        return WriteInfo(positions, skip, ring.cursor, ring.count, new_cursor, new_count), adds + 1, data


@dataclasses.dataclass(frozen=True)
class TimeMajorStorage(Storage):
    """TorchRL's memory layout, ``[capacity, *lanes, ...]``, behind the same time-slot interface."""

    def init(self, layout):
        leaves = [jnp.zeros((layout.capacity, *layout.lanes, *shape), dtype) for _, shape, dtype in layout.specs]
        return jax.tree_util.tree_unflatten(layout.treedef, leaves)

    def write(self, layout, storage, positions, data, skip=0):
        ax = layout.ndim - 1

        def put(buf, x):
            x = jnp.moveaxis(jax.lax.slice_in_dim(x, skip, x.shape[ax], axis=ax), ax, 0)
            return buf.at[positions].set(x, mode="drop", unique_indices=True)

        return jax.tree_util.tree_map(put, storage, data)

    def gather(self, layout, storage, index):
        return jax.tree_util.tree_map(lambda x: x[(index[-1], *index[:-1])], storage)


@dataclasses.dataclass(frozen=True)
class PrevId:
    """A stage that reads the storage: ``batch["prev"]`` is the id stored in the slot before each
    item's (same lane, through ``Storage.gather``); ``init`` refuses a buffer without ``key``."""

    key: str = "id"

    def check(self, layout, storage):
        layout.spec(self.key)  # raises naming the key

    def apply(self, batch, ctx: SampleContext):
        *lanes, t = ctx.index
        prev = jnp.where(t == 0, ctx.ring.capacity - 1, t - 1)
        return dict(batch, prev=ctx.storage.gather(ctx.ring.layout, ctx.data, (*lanes, prev))[self.key])


def double_prev(batch):
    """A plain function stage, run after ``PrevId`` (it reads its output)."""
    return dict(batch, prev2=batch["prev"] * 2)


@dataclasses.dataclass(frozen=True)
class Negating:
    """A buffer that is no ``ReplayBuffer`` (it wraps one and negates sampled ids): the group
    wrappers take it because it implements ``rlbuf.buffers.protocols.SplittableBuffer``."""

    inner: ReplayBuffer

    batch_size = property(lambda self: self.inner.batch_size)
    ndim = property(lambda self: self.inner.ndim)

    def init(self, example):
        return self.inner.init(example)

    def add(self, state, data):
        return self.inner.add(state, data)

    def sample(self, state, key):
        state, batch, info = self.inner.sample(state, key)
        return state, dict(batch, id=-batch["id"]), info

    def can_sample(self, state):
        return self.inner.can_sample(state)

    def num_stored(self, state):
        return self.inner.num_stored(state)

    def update_priority(self, state, index, priority):
        return self.inner.update_priority(state, index, priority)

    def split(self, n_groups, who="Negating.split"):
        return Negating(self.inner.split(n_groups, who))

    def stored(self, data, who="Negating.add"):
        return self.inner.stored(data, who)

    def check(self, layout, data):
        return self.inner.check(layout, data)

    def with_batch_size(self, batch_size):
        return Negating(self.inner.with_batch_size(batch_size))


# ---------------------------------------------------------------------------------- the checks

LANES, T, WINDOW, CAP, STRIDE = 4, 6, 3, 8, 2
BATCH = 8


def _data(lanes, t, start):
    """``ids[l, k]`` = ``1000 * l + start + k``: the sampled values tell lane and step."""
    ids = 1000 * np.arange(lanes)[:, None] + start + np.arange(t)[None, :]
    return {"id": jnp.asarray(ids, jnp.int32), "next": {"x": jnp.asarray(ids, jnp.float32) / 2}}


def _buffer():
    return ReplayBuffer(storage=TimeMajorStorage(LANES * CAP, ndim=2), sampler=RecentSampler(WINDOW),
                        writer=StrideWriter(STRIDE), batch_size=BATCH)


def _check(ids, n_adds, lanes):
    """Every sampled id is one of the ``WINDOW`` newest kept (even) steps of its lane."""
    kept = np.arange(0, n_adds * T, 1)
    kept = kept[(kept % T) % STRIDE == 0]  # the steps StrideWriter keeps, in time order
    newest = set(kept[-WINDOW:].tolist())
    for v in np.asarray(ids).reshape(-1).tolist():
        lane, step = divmod(int(v), 1000)
        assert 0 <= lane < lanes and step in newest, (v, sorted(newest))


def _staged():
    return dataclasses.replace(_buffer(), transform=(PrevId(), double_prev))


def _check_stages(batch, n):
    """``PrevId`` then ``double_prev`` ran, in that order, on the ``n`` first items (the others
    are not checked: per-worker halves are checked one by one)."""
    ids = np.asarray(batch["id"])[:n]
    np.testing.assert_array_equal(np.asarray(batch["prev"])[:n], ids - STRIDE)  # kept steps are STRIDE apart
    np.testing.assert_array_equal(np.asarray(batch["prev2"])[:n], 2 * (ids - STRIDE))


def _run(rb, n_adds=3):
    """Plain/sharded: ``add``, ``sample``, ``can_sample``, ``num_stored`` jitted, state donated."""
    state = rb.init(_data(LANES, T, 0))
    add = jax.jit(rb.add, donate_argnums=0)
    sample = jax.jit(rb.sample, donate_argnums=0)
    assert not bool(rb.can_sample(state))
    for i in range(n_adds):
        state = add(state, _data(LANES, T, i * T))
    state, batch, info = sample(state, jax.random.key(0))
    assert batch["id"].shape == (BATCH,) and bool(np.all(info["mask"]))
    _check(batch["id"], n_adds, LANES)
    np.testing.assert_array_equal(np.asarray(batch["next"]["x"]), np.asarray(batch["id"]) / 2)
    assert bool(rb.can_sample(state))
    assert int(jax.jit(rb.num_stored)(state)) == len(state) == LANES * min(n_adds * T // STRIDE, CAP)
    return state


def test_plain():
    state = _run(_buffer())
    assert int(state.writer) == 3 and int(state.sampler.seen) == 3 and int(state.sampler.draws) == 1
    # info["index"] addresses the time-major storage through gather: t first.
    rb = _buffer()
    _, batch, info = rb.sample(state, jax.random.key(1))
    lane, t = info["index"]
    np.testing.assert_array_equal(np.asarray(state.storage["id"])[np.asarray(t), np.asarray(lane)], batch["id"])


def test_stages_plain_and_refused():
    state = _run(_staged())
    _, batch, _ = jax.jit(_staged().sample)(state, jax.random.key(3))
    _check_stages(batch, BATCH)
    # chain(...) is the same chain as the tuple; a stage's check runs at init
    _, batch2, _ = jax.jit(dataclasses.replace(_buffer(), transform=chain(PrevId(), double_prev)).sample)(
        state, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(batch2["prev2"]), np.asarray(batch["prev2"]))
    with pytest.raises(KeyError, match="key 'nope' is not stored"):
        dataclasses.replace(_buffer(), transform=(PrevId("nope"),)).init(_data(LANES, T, 0))
    with pytest.raises(TypeError, match="tuple"):
        dataclasses.replace(_buffer(), transform=[double_prev])
    with pytest.raises(TypeError, match="stage"):
        dataclasses.replace(_buffer(), transform=(double_prev, 3))


def test_stages_sharded_and_per_worker():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    state = _run(shard(_staged(), mesh))
    _, batch, _ = jax.jit(shard(_staged(), mesh).sample)(state, jax.random.key(4))
    _check_stages(batch, BATCH)
    prb = PerWorkerReplayBuffer(_staged(), 2)
    state = prb.init(_data(LANES, T, 0))
    for i in range(3):
        state = prb.add_worker(state, 0, _data(LANES, T, i * T))
        state = prb.add_worker(state, 1, _data(LANES, T, i * T))
    _, batch, _ = jax.jit(prb.sample)(state, jax.random.key(5))
    _check_stages(batch, BATCH)


def test_any_splittable_buffer_runs_per_worker_and_sharded():
    import rlbuf

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    for rb in (_buffer(), Negating(_buffer()), shard(_buffer(), mesh), PerWorkerReplayBuffer(_buffer(), 2)):
        assert isinstance(rb, rlbuf.Buffer), type(rb).__name__
    assert isinstance(Negating(_buffer()), rlbuf.SplittableBuffer)
    prb = PerWorkerReplayBuffer(Negating(_buffer()), 2)
    state = prb.init(_data(LANES, T, 0))
    for w in range(2):
        state = prb.add_worker(state, w, _data(LANES, T, 0))
    _, batch, _ = jax.jit(prb.sample)(state, jax.random.key(6))
    _check(-batch["id"], 1, LANES)  # the wrapper's own sample ran in each worker
    assert int(prb.num_stored(state)) == 2 * LANES * T // STRIDE
    state = _run(shard(_buffer(), mesh))  # the sharded wrapper checks batches through rb.check
    with pytest.raises(TypeError, match="SplittableBuffer"):
        PerWorkerReplayBuffer(object(), 2)


def test_sharded_on_a_one_device_mesh():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    srb = shard(_buffer(), mesh)
    assert srb.local_buffer.sampler.groups == 1 and isinstance(srb.local_buffer.storage, TimeMajorStorage)
    state = _run(srb)
    assert state.writer.shape == (1,) and int(state.writer[0]) == 3 and int(state.sampler.seen[0]) == 3


def test_per_worker():
    W = 2
    prb = PerWorkerReplayBuffer(_buffer(), W)
    local = prb.local_buffer
    assert local.sampler.groups == W and local.storage == TimeMajorStorage(LANES * CAP // W, ndim=2)
    assert local.batch_size == BATCH // W
    state = prb.init(_data(LANES, T, 0))
    add_worker = jax.jit(prb.add_worker, donate_argnums=0)
    for i in range(3):  # worker 0 gets three batches, worker 1 one
        state = add_worker(state, 0, _data(LANES, T, i * T))
    state = add_worker(state, 1, _data(LANES, T, 0))
    assert np.asarray(state.writer).tolist() == [3, 1] and np.asarray(state.sampler.seen).tolist() == [3, 1]
    state, batch, info = jax.jit(prb.sample)(state, jax.random.key(0))
    assert batch["id"].shape == (BATCH,)
    half = BATCH // W
    _check(batch["id"][:half], 3, LANES)
    _check(batch["id"][half:], 1, LANES)
    assert np.asarray(info["index"][0]).tolist() == [0] * half + [1] * half
    assert int(prb.num_stored(state)) == len(state) == LANES * (CAP // W + T // STRIDE)
    assert bool(prb.can_sample(state))


@pytest.mark.parametrize("writer", [MaxValueWriter(rank_key="id"), StrideWriter()], ids=lambda w: type(w).__name__)
def test_slice_sampler_refused_with_a_writer_that_breaks_time_order(writer):
    ndim = 1 if isinstance(writer, MaxValueWriter) else 2
    rb = ReplayBuffer(storage=LazyTensorStorage(LANES * CAP, ndim=ndim),
                      sampler=SliceSampler(slice_len=2, traj_key="id"), writer=writer, batch_size=4)
    example = _data(LANES, T, 0) if ndim == 2 else jax.tree_util.tree_map(lambda x: x.reshape(-1), _data(LANES, T, 0))
    with pytest.raises(ValueError, match=rf"SliceSampler needs a writer that provides \['time_order'\].*"
                                         rf"{type(writer).__name__} provides none"):
        rb.init(example)


def test_the_buffer_rejects_objects_that_are_not_plug_ins():
    with pytest.raises(TypeError, match="storage must be a rlbuf.storages.Storage"):
        ReplayBuffer(storage=object(), batch_size=2)
    with pytest.raises(TypeError, match="writer must be a rlbuf.writers.base.Writer"):
        ReplayBuffer(storage=TimeMajorStorage(8), writer=object(), batch_size=2)
    with pytest.raises(TypeError):
        ReplayBuffer(TimeMajorStorage(8), batch_size=2)  # keyword-only
