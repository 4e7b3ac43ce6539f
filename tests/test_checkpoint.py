"""``rlbuf.checkpoint``: bit-exact resumption, refusal of mismatched targets, atomicity under
SIGKILL, typed PRNG keys, sharded states, the async ``Manager``.

The reference for "bit-exact" is the never-stopped run: both the original state and the
restored one are continued with the same jitted functions (which must not recompile) and every
array they produce is compared byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# jax 0.12: the first import of orbax changes jax's trace context, so every function jitted before
# it compiles once more (documented in rlbuf.checkpoint); these tests count compiles, so import
# orbax before any of them compiles (the lazy import itself is tested in a subprocess below).
import orbax.checkpoint  # noqa: F401
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf import checkpoint, collectors
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.checkpoint import CheckpointMismatchError, Manager
from rlbuf.samplers.base import Sampler
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage
from rlbuf.writers import MaxValueWriter, RoundRobinWriter

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_helpers")
LANES, CAP, BATCH = 2, 12, 8
TRAJ = ("collector", "traj_ids")


# --------------------------------------------------------------------------- helpers


def _np_leaves(tree):
    out = []
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append((jax.tree_util.keystr(p), np.asarray(x)))
    return out


def assert_bit_equal(a, b):
    """Same treedef (static metadata included) and byte-identical leaves of the same dtype/shape."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (p, x), (_, y) in zip(_np_leaves(a), _np_leaves(b)):
        assert (x.dtype, x.shape) == (y.dtype, y.shape), p
        assert x.tobytes() == y.tobytes(), f"{p} differs"


def trajectories(seed: int, t: int, first_id: int):
    """A ``[LANES, t]`` batch with episodes (done with probability 0.3) and TorchRL-style
    trajectory ids from a global counter starting after ``first_id``; returns ``(batch, next
    id)``. Lane ``i`` of the first batch has id ``i``."""
    rng = np.random.default_rng(seed)
    done = rng.random((LANES, t)) < 0.3
    ids = np.zeros((LANES, t), np.int32)
    cur = np.arange(LANES, dtype=np.int32) + (first_id - LANES)
    nxt = first_id
    for s in range(t):
        ids[:, s] = cur
        for i in range(LANES):
            if done[i, s]:
                cur[i], nxt = nxt, nxt + 1
    obs = rng.normal(size=(LANES, t, 3)).astype(np.float32)
    batch = {
        "observation": obs,
        "action": rng.integers(0, 4, (LANES, t)).astype(np.int32),
        "next": {
            "observation": obs + 1,
            "reward": rng.normal(size=(LANES, t)).astype(np.float32),
            "done": done,
            "terminated": done,
            "truncated": np.zeros((LANES, t), bool),
        },
        "collector": {"traj_ids": ids},
    }
    return jax.tree.map(jnp.asarray, batch), nxt


class Stream:
    """Deterministic ``add`` batches (time lengths cycle through ``lengths``)."""

    def __init__(self, seed=0, lengths=(5, 3, 4)):
        self.seed, self.lengths, self.i, self.next_id = seed, lengths, 0, LANES

    def __call__(self, t=None):
        t = self.lengths[self.i % len(self.lengths)] if t is None else t
        b, self.next_id = trajectories(self.seed * 1000 + self.i, t, self.next_id)
        self.i += 1
        return b

    def fork(self):
        """An independent copy that continues from here (for the second run)."""
        c = Stream(self.seed, self.lengths)
        c.i, c.next_id = self.i, self.next_id
        return c


def _slice():
    return SliceSampler(slice_len=2, traj_key=TRAJ, strict_length=False)


def _slice_without_replacement():
    return SliceSamplerWithoutReplacement(slice_len=2, traj_key=TRAJ, strict_length=False)


def _prioritized():
    return PrioritizedSampler(max_capacity=LANES * CAP, alpha=0.7, beta=0.5)


def _prioritized_slice():
    return PrioritizedSliceSampler(LANES * CAP, 0.7, 0.5, slice_len=2, traj_key=TRAJ, strict_length=False)


SAMPLERS = {
    "random": lambda: RandomSampler(),
    "without_replacement": lambda: SamplerWithoutReplacement(),
    "without_replacement_drop_last": lambda: SamplerWithoutReplacement(drop_last=True),
    "slice": _slice,
    "slice_without_replacement": _slice_without_replacement,
    "prioritized": _prioritized,
    "prioritized_slice": _prioritized_slice,
    # writers keep state too (MaxValueWriter: ndim=1 storage only, fed flattened [LANES * T] items)
    "max_value_writer": lambda: (RandomSampler(), MaxValueWriter(rank_key=("next", "reward"))),
}
_FNS: dict = {}


@dataclasses.dataclass(frozen=True)
class _Flattened:
    """An ``ndim=1`` buffer fed the stream's ``[LANES, T]`` batches as ``[LANES * T]`` items."""

    rb: ReplayBuffer

    @staticmethod
    def _flat(batch):
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)

    def init(self, example):
        return self.rb.init(self._flat(example))

    def add(self, state, data):
        return self.rb.add(state, self._flat(data))


def fns(name):
    """Module-level cache: ``(rb, add, sample, update_priority or None)`` jitted once per sampler
    (``add`` takes the stream's ``[LANES, T]`` batches for every storage layout)."""
    if name not in _FNS:
        made = SAMPLERS[name]()
        sampler, writer = made if isinstance(made, tuple) else (made, RoundRobinWriter())
        ndim = 1 if name == "max_value_writer" else 2
        rb = ReplayBuffer(storage=LazyTensorStorage(LANES * CAP, ndim=ndim), sampler=sampler, writer=writer,
                          batch_size=BATCH)
        prioritized = type(sampler).update_priority is not Sampler.update_priority
        sample, update = jax.jit(rb.sample), jax.jit(rb.update_priority) if prioritized else None
        if ndim == 1:
            rb = _Flattened(rb)
        _FNS[name] = (rb, jax.jit(rb.add, donate_argnums=0), sample, update)
    return _FNS[name]


def step(name, state, data, key):
    """One training-loop iteration: add, sample, (prioritized) update priorities."""
    rb, add, sample, update = fns(name)
    state = add(state, data)
    state, batch, info = sample(state, key)
    if update is not None:
        # deterministic new priorities from the sampled data
        prio = jnp.abs(batch["next"]["reward"]).reshape(jax.tree.leaves(info["index"])[0].shape) + 0.1
        state = update(state, info["index"], prio)
    return state, (batch, info)


def run(name, state, stream, key, n):
    outs = []
    for _ in range(n):
        key, sub = jax.random.split(key)
        state, out = step(name, state, stream(), sub)
        outs.append(out)
    return state, outs


def copy_tree(tree):
    """A private copy (the runs donate their states)."""
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_roundtrip_continues_bit_exactly(name, tmp_path):
    rb, add, sample, update = fns(name)
    stream = Stream(seed=1, lengths=(5,))  # one add shape: one compile; 4 adds of 5 wrap the ring of 12
    state = rb.init(stream(1))
    state, _ = run(name, state, stream, jax.random.key(0), 4)
    compiled = [f._cache_size() for f in (add, sample, update) if f is not None]
    checkpoint.save(tmp_path / "ckpt", state)
    abstract = jax.eval_shape(rb.init, stream.fork()(1))
    restored = checkpoint.restore(tmp_path / "ckpt", abstract)
    assert_bit_equal(state, restored)
    assert restored.layout == state.layout
    # concrete targets work too (only their structure, dtypes and shardings are used)
    assert_bit_equal(state, checkpoint.restore(tmp_path / "ckpt", rb.init(stream.fork()(1))))

    key = jax.random.key(42)
    a_state, a = run(name, state, stream.fork(), key, 4)
    b_state, b = run(name, restored, stream.fork(), key, 4)
    assert_bit_equal((a_state, a), (b_state, b))
    # restored leaves have the original avals (dtype, weak type, placement): no recompilation
    assert [f._cache_size() for f in (add, sample, update) if f is not None] == compiled


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(["random", "without_replacement"]),
    lengths=st.lists(st.sampled_from([3, 4, 5]), min_size=1, max_size=6),
    samples_before=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_property(tmp_path_factory, name, lengths, samples_before, seed):
    """Any history of adds (wrapping or not) and samples (mid-epoch or not) resumes exactly."""
    rb, add, sample, _ = fns(name)
    stream = Stream(seed=seed, lengths=(3, 4, 5))
    state = rb.init(stream(1))
    for t in lengths:
        state = add(state, stream(t))
    key = jax.random.key(seed)
    for _ in range(samples_before):
        key, sub = jax.random.split(key)
        state, _, _ = sample(state, sub)
    directory = tmp_path_factory.mktemp("prop") / "ckpt"
    checkpoint.save(directory, state)
    restored = checkpoint.restore(directory, jax.eval_shape(lambda: state))
    assert_bit_equal(state, restored)
    a = run(name, state, stream.fork(), key, 2)
    b = run(name, restored, stream.fork(), key, 2)
    assert_bit_equal(a, b)


def test_save_replaces_atomically_and_keeps_one(tmp_path):
    rb, add, _, _ = fns("random")
    stream = Stream(seed=2)
    s0 = rb.init(stream(1))
    s1 = add(copy_tree(s0), stream())
    checkpoint.save(tmp_path / "c", s0)
    checkpoint.save(tmp_path / "c", s1)
    assert os.listdir(tmp_path / "c") == ["1"]  # one step dir, the newest
    assert_bit_equal(s1, checkpoint.restore(tmp_path / "c", s0))
    meta = checkpoint.metadata(tmp_path / "c")
    paths = [leaf["path"] for leaf in meta["leaves"]]
    assert ".storage['observation']" in paths and ".cursor" in paths
    obs = meta["leaves"][paths.index(".storage['observation']")]
    assert obs["shape"] == [LANES, CAP, 3] and obs["dtype"] == "float32"


def test_typed_prng_keys(tmp_path):
    """Typed keys of several impls (saved as key_data, rewrapped with the target's impl), legacy
    uint32 keys, numpy arrays and Python scalars."""
    state = {
        "threefry": jax.random.split(jax.random.key(1), 3),
        "rbg": jax.random.key(2, impl="rbg"),
        "raw": jax.random.PRNGKey(3),
        "np": np.arange(4, dtype=np.int16),
        "scalar": 7,
    }
    checkpoint.save(tmp_path / "k", state)
    meta = {leaf["path"]: leaf for leaf in checkpoint.metadata(tmp_path / "k")["leaves"]}
    assert meta["['threefry']"]["key_impl"] == "threefry2x32" and meta["['threefry']"]["shape"] == [3, 2]
    assert meta["['rbg']"]["key_impl"] == "rbg" and meta["['raw']"]["key_impl"] is None
    for target in (state, jax.eval_shape(lambda: {k: v for k, v in state.items() if k not in ("np", "scalar")})):
        target = dict(target, np=state["np"], scalar=state["scalar"])
        r = checkpoint.restore(tmp_path / "k", target)
        assert_bit_equal(state, r)
        assert r["threefry"].dtype == state["threefry"].dtype and r["rbg"].dtype == state["rbg"].dtype
        assert isinstance(r["np"], np.ndarray) and r["scalar"] == 7 and type(r["scalar"]) is int
        assert_bit_equal(jax.random.normal(r["threefry"][1], (5,)), jax.random.normal(state["threefry"][1], (5,)))
        assert_bit_equal(jax.random.bits(r["rbg"], (5,)), jax.random.bits(state["rbg"], (5,)))
    with pytest.raises(CheckpointMismatchError, match=re.escape("['rbg']") + ".*'rbg'.*'threefry2x32'"):
        checkpoint.restore(tmp_path / "k", dict(state, rbg=jax.random.key(2)))


def test_collector_and_buffer_resume_bit_exactly(tmp_path):
    gymnax = pytest.importorskip("gymnax")
    env, params = gymnax.make("CartPole-v1")

    def policy(w, obs, key):  # a stochastic policy: the collector's keys matter
        logits = obs @ w
        return jax.random.categorical(key, logits).astype(jnp.int32), {"logits": logits}

    collector = collectors.Collector(env, policy, frames_per_batch=16, num_envs=2, env_params=params,
                                     max_frames_per_traj=7)
    rb = ReplayBuffer(storage=LazyTensorStorage(64, ndim=2), sampler=SamplerWithoutReplacement(), batch_size=8)
    collect, add, sample = jax.jit(collector.collect), jax.jit(rb.add), jax.jit(rb.sample)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)

    def loop(cstate, bstate, key, n):
        out = []
        for _ in range(n):
            key, sub = jax.random.split(key)
            cstate, batch = collect(cstate, w)
            bstate = add(bstate, batch)
            bstate, sampled, info = sample(bstate, sub)
            out.append((batch, sampled, info))
        return cstate, bstate, out

    cstate = collector.init(jax.random.key(0))
    _, first = collect(cstate, w)
    bstate = rb.init(first)
    cstate, bstate, _ = loop(cstate, bstate, jax.random.key(1), 3)
    assert int(cstate.next_traj_id) > 2  # some episodes ended: the counter is not trivial
    checkpoint.save(tmp_path / "train", (cstate, bstate))
    restored = checkpoint.restore(tmp_path / "train", jax.eval_shape(lambda: (cstate, bstate)))
    assert_bit_equal((cstate, bstate), restored)
    a = loop(cstate, bstate, jax.random.key(2), 3)
    b = loop(*restored, jax.random.key(2), 3)
    assert_bit_equal(a, b)
    assert collect._cache_size() == 1 and sample._cache_size() == 1


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def saved_buffer(tmp_path_factory):
    rb, add, _, _ = fns("without_replacement")
    stream = Stream(seed=3)
    state = add(rb.init(stream(1)), stream())
    directory = tmp_path_factory.mktemp("refuse") / "ckpt"
    checkpoint.save(directory, state)
    return directory, state, stream(1)


def _target(example, sampler=None, max_size=LANES * CAP):
    rb = ReplayBuffer(storage=LazyTensorStorage(max_size, ndim=2), sampler=sampler or SamplerWithoutReplacement(),
                      batch_size=BATCH)
    return jax.eval_shape(rb.init, example)


def test_refuses_other_shape(saved_buffer):
    directory, _, example = saved_buffer
    with pytest.raises(CheckpointMismatchError,
                       match=re.escape("key path .storage['action']: saved shape (2, 12) dtype int32, target expects "
                                       "shape (2, 6) dtype int32")):
        checkpoint.restore(directory, _target(example, max_size=LANES * CAP // 2))
    wider = dict(example, observation=jnp.zeros((LANES, 1, 4)))
    with pytest.raises(CheckpointMismatchError, match=re.escape(".storage['observation']: saved shape (2, 12, 3)")):
        checkpoint.restore(directory, _target(wider))


def test_refuses_other_dtype(saved_buffer):
    directory, _, example = saved_buffer
    half = dict(example, observation=example["observation"].astype(jnp.float16))
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            ".storage['observation']: saved shape (2, 12, 3) dtype float32, target expects shape (2, 12, 3) "
            "dtype float16")):
        checkpoint.restore(directory, _target(half))


def test_refuses_extra_and_missing_keys(saved_buffer, tmp_path):
    directory, state, example = saved_buffer
    extra = dict(example, extra=jnp.zeros((LANES, 1)))
    with pytest.raises(CheckpointMismatchError,
                       match=re.escape("key path .storage['extra'] is in the target but not in the checkpoint")):
        checkpoint.restore(directory, _target(extra))
    fewer = {k: v for k, v in example.items() if k != "action"}
    with pytest.raises(CheckpointMismatchError,
                       match=re.escape("key path .storage['action'] is in the checkpoint but not in the target")):
        checkpoint.restore(directory, _target(fewer))
    with pytest.raises(CheckpointMismatchError,
                       match=re.escape("key path .sampler.perm is in the checkpoint but not in the target")):
        checkpoint.restore(directory, _target(example, RandomSampler()))
    wrapped = tmp_path / "wrapped"
    checkpoint.save(wrapped, {"buffer": state})
    with pytest.raises(CheckpointMismatchError, match=re.escape("key path ['collector'] is in the target but not")):
        checkpoint.restore(wrapped, {"buffer": state, "collector": jnp.zeros(3)})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Tagged:
    x: jax.Array
    tag: str = dataclasses.field(metadata=dict(static=True))


def test_refuses_other_static_metadata(tmp_path):
    checkpoint.save(tmp_path / "t", _Tagged(jnp.arange(3), "v1"))
    with pytest.raises(CheckpointMismatchError, match="static metadata.*v1.*v2"):
        checkpoint.restore(tmp_path / "t", _Tagged(jnp.zeros(3, jnp.int32), "v2"))
    r = checkpoint.restore(tmp_path / "t", _Tagged(jnp.zeros(3, jnp.int32), "v2"), check_treedef=False)
    assert r.tag == "v2" and r.x.tolist() == [0, 1, 2]  # the target's treedef, the saved arrays


def test_restore_never_unpickles(saved_buffer, monkeypatch):
    directory, state, _ = saved_buffer

    def forbidden(*a, **k):
        raise AssertionError("restore unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    assert_bit_equal(state, checkpoint.restore(directory, jax.eval_shape(lambda: state)))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        checkpoint.restore(tmp_path / "nope", {"a": jnp.zeros(1)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.restore(tmp_path / "empty", {"a": jnp.zeros(1)})


# --------------------------------------------------------------------------- manager


def test_manager_keeps_last_k_async_and_donation_safe(tmp_path):
    rb, add, _, _ = fns("without_replacement")
    stream = Stream(seed=4)
    state = rb.init(stream(1))
    history = []
    with Manager(tmp_path / "run", max_to_keep=2) as mgr:
        assert mgr.latest_step() is None
        for step_ in range(4):
            state = add(state, stream())
            history.append(copy_tree(state))
            mgr.save(step_ * 10, state)
            # the next add donates the state while the save may still be writing
            state = add(state, stream())
        mgr.wait_until_finished()
        assert mgr.all_steps() == [20, 30] and mgr.latest_step() == 30
        with pytest.raises(ValueError, match="not newer than the latest checkpoint step 30"):
            mgr.save(30, state)
        target = jax.eval_shape(lambda: state)
        assert_bit_equal(history[3], mgr.restore(target))
        assert_bit_equal(history[2], mgr.restore(target, step=20))
        with pytest.raises(FileNotFoundError, match="step 10"):
            mgr.restore(target, step=10)
    with Manager(tmp_path / "run") as again:  # reopened: finds the steps on disk
        assert again.all_steps() == [20, 30]
    assert_bit_equal(history[3], checkpoint.restore(tmp_path / "run", target))


# --------------------------------------------------------------------------- atomicity


def _dir_bytes(path):
    total = 0
    for r, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.path.getsize(os.path.join(r, f))
            except OSError:  # renamed/finalized under our feet
                pass
    return total


def _kill_save_midway(directory):
    """Run ``big_save.py`` (a 200 MB save into ``directory``) and SIGKILL it once its temporary
    directory holds data; returns ``(temporary directory, whether it was killed mid-save)``."""
    proc = subprocess.Popen([sys.executable, os.path.join(HELPERS, "big_save.py"), str(directory), "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_dir = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = [d for d in os.listdir(directory) if ".orbax-checkpoint-tmp" in d]
            if tmps:
                tmp_dir = directory / tmps[0]
                # kill once real data is being written, not just at the directory's creation
                if _dir_bytes(tmp_dir) > 1_000_000:
                    break
            time.sleep(0.002)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
    return tmp_dir, alive and tmp_dir is not None and proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_killed_save_leaves_previous_checkpoint(tmp_path):
    sys.path.insert(0, HELPERS)
    try:
        import big_state
    finally:
        sys.path.remove(HELPERS)
    directory = tmp_path / "big"
    original = big_state.make_state(0)
    checkpoint.save(directory, original)

    for _attempt in range(3):
        tmp_dir, killed = _kill_save_midway(directory)
        if killed:
            break
        checkpoint.save(directory, original)  # the save won the race (a loaded machine): again
    assert killed, "the save finished before it could be killed, 3 times: inconclusive"
    assert os.path.isdir(tmp_dir)  # the interrupted save's leftovers

    abstract = jax.eval_shape(lambda: original)
    restored = checkpoint.restore(directory, abstract)
    assert int(restored.cursor) == int(original.cursor) and int(restored.added) == int(original.added)
    for k in original.storage:
        assert np.array_equal(np.asarray(restored.storage[k]), np.asarray(original.storage[k])), k
    del restored

    # the next save cleans the leftovers up and replaces the checkpoint
    newer = dataclasses.replace(original, cursor=original.cursor + 1)
    checkpoint.save(directory, newer)
    assert sorted(os.listdir(directory)) == ["1"]  # leftovers and the replaced step 0 are gone
    assert int(checkpoint.restore(directory, abstract).cursor) == int(original.cursor) + 1


# --------------------------------------------------------------------------- sharding


@pytest.mark.multidevice
def test_sharded_state_roundtrip(tmp_path):
    flags = f"{os.environ.get('RLBUF_TEST_XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(HELPERS, "sharded_roundtrip.py"), str(tmp_path / "sh")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.multihost
def test_multihost_roundtrip(tmp_path):
    """Two jax.distributed processes (2 CPU devices each) save one sharded buffer together, each
    writing its own shards, and restore and continue it bit-exactly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tmp_path / "mh"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["XLA_FLAGS"] = os.environ.get("RLBUF_TEST_XLA_FLAGS", "")  # the suite's compile flags, no forced devices
    procs = [subprocess.Popen([sys.executable, os.path.join(HELPERS, "multihost_roundtrip.py"), str(i), str(port),
                               str(directory), str(tmp_path / f"out{i}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for i, p in enumerate(procs):
        assert p.returncode == 0, logs[i][-3000:]
        res = json.loads((tmp_path / f"out{i}.json").read_text())
        assert res == {"restored_equal": True, "shardings_equal": True, "continue_equal": True,
                       "compiles": [1, 1]}, (i, res)
    # one checkpoint, each process's shards written by that process
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(directory / "0" / "state"))


# --------------------------------------------------------------------------- optional dependency


def test_orbax_is_imported_lazily(monkeypatch):
    out = subprocess.run([sys.executable, "-c", "import sys, rlbuf, rlbuf.checkpoint; print('orbax' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
    for mod in [m for m in sys.modules if m == "orbax" or m.startswith("orbax.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "orbax", None)  # makes `import orbax...` raise ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'rlbuf[checkpoint]'")):
        checkpoint.save("/nonexistent/never-written", {"a": jnp.zeros(1)})
