"""Checkpoint integrity (issue 12 #5, issue 11): per-leaf checksums verified on restore (bit
flips in the data refused naming the checkpoint and the key path), truncated/deleted files
reported with the checkpoint path and key path, the structured tree description (no
``str(treedef)``), the refusal of older checkpoint formats, and the class paths of the
second release's modules (moved in 0.3.0) restoring as the classes' current paths."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf import _checkpoint_desc as cd
from rlbuf import checkpoint
from rlbuf.buffers.ensemble import ReplayBufferEnsemble
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.checkpoint import CheckpointCorruptError, CheckpointMismatchError
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

LANES, T = 4, 4096  # observations: 4 x 4096 x 8 float32 = 512 KiB of incompressible data
RB = ReplayBuffer(storage=LazyTensorStorage(LANES * T, ndim=2), sampler=SamplerWithoutReplacement(), batch_size=8)


def _state():
    rng = np.random.default_rng(0)
    data = {"observation": jnp.asarray(rng.normal(size=(LANES, T, 8)).astype(np.float32)),
            "action": jnp.asarray(rng.integers(0, 4, (LANES, T)).astype(np.int32))}
    return RB.add(RB.init(data), data)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A saved buffer (kept pristine: each test works on a copy) and its state."""
    directory = tmp_path_factory.mktemp("integrity") / "ckpt"
    state = _state()
    checkpoint.save(directory, state)
    return directory, state


@pytest.fixture
def copy(pristine, tmp_path):
    src, state = pristine
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst, state


def _files(directory):
    return [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]


def _largest(directory):
    return max(_files(directory), key=os.path.getsize)


def test_bit_flips_in_the_largest_data_chunk_are_refused(copy):
    directory, state = copy
    big = _largest(directory)
    orig = open(big, "rb").read()
    assert len(orig) > 400_000  # the observations' chunk
    target = jax.eval_shape(lambda: state)
    # The chunk may pack several leaves (the layout is orbax's): each flip must be refused
    # naming the checkpoint and one real key path of the state, mostly the observations'.
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
    named = []
    for frac in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95):
        pos = int(len(orig) * frac)
        flipped = bytearray(orig)
        flipped[pos] ^= 1 << (pos % 8)
        with open(big, "wb") as f:
            f.write(bytes(flipped))
        with pytest.raises(CheckpointCorruptError,
                           match=re.escape(f"{directory} (step 0) is damaged: key path .")) as err:
            checkpoint.restore(directory, target)
        path = re.search(r"key path (\S+)", str(err.value)).group(1).rstrip(":,")
        assert path in paths, (path, sorted(paths))
        named.append(path)
    assert named.count(".storage['observation']") >= 4, named
    with open(big, "wb") as f:
        f.write(orig)
    restored = checkpoint.restore(directory, target)  # the pristine bytes restore again
    assert np.array_equal(np.asarray(restored.storage["observation"]), np.asarray(state.storage["observation"]))


@pytest.mark.parametrize("mode", ["truncate", "delete", "empty"])
def test_damaged_data_file_names_checkpoint_and_key(copy, mode):
    directory, state = copy
    big = _largest(directory)
    if mode == "delete":
        os.remove(big)
    else:
        data = open(big, "rb").read()
        with open(big, "wb") as f:
            f.write(data[: len(data) // 2] if mode == "truncate" else b"")
    # the chunk holds several leaves: the one named is the first whose read failed
    with pytest.raises(CheckpointCorruptError, match=re.escape(f"{directory} (step 0) is damaged: key path .")):
        checkpoint.restore(directory, state)


@pytest.mark.parametrize("mode", ["truncate", "delete", "garbage"])
def test_damaged_description_names_its_file(copy, mode):
    directory, state = copy
    path = os.path.join(directory, "0", "rlbuf", "metadata")
    if mode == "delete":
        os.remove(path)
    else:
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2] if mode == "truncate" else b"\xff\xfe\x00garbage")
    msg = re.escape(f"{directory} (step 0) is damaged: its description {path}")
    with pytest.raises(CheckpointCorruptError, match=msg):
        checkpoint.restore(directory, state)


def test_edited_description_is_refused(copy):
    """A description that parses but was changed (here a leaf's shape) fails its CRC."""
    directory, state = copy
    path = os.path.join(directory, "0", "rlbuf", "metadata")
    meta = json.loads(open(path).read())
    meta["leaves"][0]["shape"][0] += 1
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointCorruptError, match="does not match its checksum"):
        checkpoint.restore(directory, state)


def test_older_format_is_refused_clearly(copy):
    directory, state = copy
    path = os.path.join(directory, "0", "rlbuf", "metadata")
    meta = json.loads(open(path).read())
    old = {"format": "rlbuf.checkpoint/1", "treedef": "PyTreeDef(...)", "leaves": meta["leaves"]}
    with open(path, "w") as f:
        json.dump(old, f)
    with pytest.raises(CheckpointMismatchError,
                       match=r"format 'rlbuf.checkpoint/1', this rlbuf reads 'rlbuf.checkpoint/2'.*re-create"):
        checkpoint.restore(directory, state)


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str
    size: int
    fn: object = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Holder:
    x: jax.Array
    config: _Config = dataclasses.field(metadata=dict(static=True))


def test_structure_difference_is_named_at_its_field(tmp_path):
    checkpoint.save(tmp_path / "s", _Holder(jnp.arange(3), _Config("a", 4, len)))
    with pytest.raises(CheckpointMismatchError, match=r"at /_Holder\.aux\[0\]\._Config\.size: saved 4, target 5"):
        checkpoint.restore(tmp_path / "s", _Holder(jnp.zeros(3, jnp.int32), _Config("a", 5, len)))
    msg = r"_Holder\.aux\[0\]\._Config\.fn\.callable: saved 'builtins.len', target 'builtins.abs'"
    with pytest.raises(CheckpointMismatchError, match=msg):
        checkpoint.restore(tmp_path / "s", _Holder(jnp.zeros(3, jnp.int32), _Config("a", 4, abs)))
    # a static lambda of the same name compares equal (no memory address in the description)
    f1, f2 = (lambda x: x), (lambda x: x)
    checkpoint.save(tmp_path / "l", _Holder(jnp.arange(3), _Config("a", 4, f1)))
    r = checkpoint.restore(tmp_path / "l", _Holder(jnp.zeros(3, jnp.int32), _Config("a", 4, f2)))
    assert r.x.tolist() == [0, 1, 2]


def test_buffer_structure_description_is_plain_json():
    desc = cd.structure(jax.tree_util.tree_structure(_state()))
    text = json.dumps(desc)
    assert "0x" not in text and "PyTreeDef" not in text
    assert "BufferState" in text and '"capacity": 4096' in text
    assert cd.first_difference(desc, json.loads(text)) is None


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.sampled_from(["float32", "int32", "uint8", "bool", "int16", "uint32"]),
       st.lists(st.integers(1, 7), min_size=0, max_size=3), st.data())
def test_checksum_numpy_equals_jax_and_sees_every_bit_flip(dtype, shape, data):
    rng = np.random.default_rng(len(shape))
    x = (rng.random(shape) < 0.5) if dtype == "bool" else rng.integers(0, 200, shape).astype(dtype)
    x = np.asarray(x)
    c = cd.checksums([x])[0]
    assert c == cd.checksums([jnp.asarray(x)])[0]
    raw = bytearray(x.tobytes())
    if dtype == "bool":  # only the value bit of a bool carries meaning
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1
    else:
        i = data.draw(st.integers(0, len(raw) * 8 - 1))
        raw[i // 8] ^= 1 << (i % 8)
    y = np.frombuffer(bytes(raw), dtype=x.dtype).reshape(x.shape)
    assert cd.checksums([y])[0] != c
    assert cd.checksums([jnp.asarray(y)])[0] != c


# --------------------------------------------------------------------------- earlier releases' class paths

#: The class paths a checkpoint of the second release (0.2.0: flat modules, the storages'
#: classes named by their first-release modules) recorded, keyed by each class's path now.
RELEASE_2_NAMES = {
    "rlbuf.buffers.replay_buffer.BufferState": "rlbuf.replay_buffer.BufferState",
    "rlbuf.buffers.ensemble.EnsembleState": "rlbuf.ensemble.EnsembleState",
    "rlbuf.storages.base.Layout": "rlbuf.storage.Layout",
    "rlbuf.storages.compact.CompactState": "rlbuf.compact.CompactState",
}


def _ensemble_state():
    """An ensemble of a ``compact_next`` prioritized buffer and a plain without-replacement one:
    every moved state class (and ``Layout``, ``CompactState``) is in its tree."""
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(2, 6, 3)).astype(np.float32)
    data = {"observation": obs,
            "next": {"observation": np.roll(obs, -1, axis=1), "done": np.arange(12).reshape(2, 6) % 4 == 3}}
    compact = ReplayBuffer(storage=LazyTensorStorage(16, ndim=2, compact_next=True),
                           sampler=PrioritizedSampler(16, 0.7, 0.5), batch_size=4)
    plain = ReplayBuffer(storage=LazyTensorStorage(16, ndim=2), sampler=SamplerWithoutReplacement(), batch_size=4)
    ens = ReplayBufferEnsemble(compact, plain)
    state = ens.init(data, data)
    state = ens.add_to(ens.add_to(state, 0, data), 1, data)
    return ens.sample(state, jax.random.key(0))[0]  # a without-replacement epoch in progress


def _rewrite_structure(directory, text: str) -> None:
    """Replace the saved structure description by ``text`` (JSON), with a valid CRC."""
    path = os.path.join(directory, "0", "rlbuf", "metadata")
    meta = json.loads(open(path).read())
    meta["structure"] = json.loads(text)
    meta["crc"] = cd.text_crc([meta["leaves"], meta["structure"]])
    with open(path, "w") as f:
        json.dump(meta, f)


def test_checkpoint_of_the_second_release_restores(tmp_path):
    """A checkpoint naming its classes by the second release's module paths restores into this
    release's classes; new checkpoints record the new paths; a name that is no old path of a
    class is still refused."""
    state = _ensemble_state()
    directory = tmp_path / "ckpt"
    checkpoint.save(directory, state)
    text = json.dumps(checkpoint.metadata(directory)["structure"])
    for new, old in RELEASE_2_NAMES.items():
        assert f'"{new}"' in text, new  # new checkpoints: the current paths
        text = text.replace(f'"{new}"', f'"{old}"')
    assert "rlbuf.buffers." not in text and "rlbuf.storages.base.Layout" not in text
    assert '"rlbuf.samplers.' in text  # the samplers' state classes did not move
    _rewrite_structure(directory, text)
    restored = checkpoint.restore(directory, jax.eval_shape(lambda: state))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    _rewrite_structure(directory, text.replace('"rlbuf.compact.CompactState"', '"rlbuf.compact.CompactStat"'))
    with pytest.raises(CheckpointMismatchError, match=r"saved node rlbuf.storages.compact.CompactStat, target"):
        checkpoint.restore(directory, jax.eval_shape(lambda: state))


def test_old_class_paths_map_to_where_the_classes_are_defined():
    assert cd.current_type_name("rlbuf.replay_buffer.BufferState") == "rlbuf.buffers.replay_buffer.BufferState"
    assert cd.current_type_name("rlbuf.storage.Layout") == "rlbuf.storages.base.Layout"  # a re-export
    assert cd.current_type_name("rlbuf.sharding.PerWorkerReplayBuffer") == \
        "rlbuf.scaling.per_worker.PerWorkerReplayBuffer"
    assert cd.current_type_name("rlbuf.transforms.MultiStep") == "rlbuf.buffers.transforms.MultiStep"
    for same in ("rlbuf.samplers.prioritized.PrioritizedSampler", "builtins.len", "rlbuf.storages.base.Layout",
                 "rlbuf.replay_buffers.X", "rlbuf.storage"):
        assert cd.current_type_name(same) == same
    desc = {"node": "rlbuf.ensemble.EnsembleState", "aux": {"class": "rlbuf.storage.Layout", "fields": {
        "node": "rlbuf.storage.Layout", "fn": {"callable": "rlbuf.regrouping.regroup"}}}, "children": ["*"]}
    assert cd.renamed(desc) == {
        "node": "rlbuf.buffers.ensemble.EnsembleState", "aux": {"class": "rlbuf.storages.base.Layout", "fields": {
            "node": "rlbuf.storage.Layout",  # a field's value, not a class path
            "fn": {"callable": "rlbuf.scaling.regrouping.regroup"}}}, "children": ["*"]}
