"""Subprocess of the multidevice test (run with ``--xla_force_host_platform_device_count=4``):
``python sharded_roundtrip.py DIRECTORY``. A buffer whose storage is sharded on the lane axis
(``NamedSharding`` over a 1-D mesh of 4 devices), plus per-lane typed PRNG keys sharded the same
way, is saved, restored into (a) its own sharding and (b) another one, and continued bit-exactly;
(c) the same for a ``rlbuf.scaling.sharding.shard`` buffer (per-device shards under ``shard_map``).
Prints ``OK`` on success (assertion errors otherwise)."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint  # noqa: F401  (see below)
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlbuf import checkpoint
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.scaling.sharding import shard
from rlbuf.storages import LazyTensorStorage

# jax 0.12: the first import of orbax bumps jax's trace context, so every function jitted before it
# compiles once more; import it up front so the no-recompile checks in main test restore only.

LANES, CAP = 8, 6


def data(i):
    ids = i * 100 + np.arange(LANES * 3).reshape(LANES, 3)
    return {"obs": np.stack([ids, -ids], -1).astype(np.float32), "next": {"done": ids % 3 == 0}}


def leaves(tree):
    out = []
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append((jax.tree_util.keystr(p), np.asarray(x)))
    return out


def assert_bit_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (p, x), (_, y) in zip(leaves(a), leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), p


def main(directory):
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("lanes",))
    lane, repl = NamedSharding(mesh, P("lanes")), NamedSharding(mesh, P())
    rb = ReplayBuffer(storage=LazyTensorStorage(LANES * CAP, ndim=2), sampler=SamplerWithoutReplacement(),
                      batch_size=8)

    def put(state):
        state = jax.device_put(state, repl)
        return dataclasses.replace(state, storage=jax.device_put(state.storage, lane))

    state = put(rb.init(jax.tree.map(jnp.asarray, data(0))))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    add = jax.jit(rb.add, out_shardings=shardings)
    sample = jax.jit(rb.sample, out_shardings=(shardings, None, None))
    keys = jax.device_put(jax.random.split(jax.random.key(7), LANES), lane)
    key = jax.random.key(1)
    for i in range(3):
        state = add(state, jax.device_put(data(i), lane))
        key, sub = jax.random.split(key)
        state, _, _ = sample(state, sub)
    saved = (state, keys)
    checkpoint.save(directory, saved)

    # (a) the target's own sharding: per-shard identical, same shardings, continues bit-exactly
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), saved)
    restored = checkpoint.restore(directory, target)
    assert_bit_equal(saved, restored)
    for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        assert y.sharding.is_equivalent_to(x.sharding, x.ndim), (x.sharding, y.sharding)
    obs = restored[0].storage["obs"]
    assert len(obs.addressable_shards) == 4 and {s.data.shape for s in obs.addressable_shards} == {(2, CAP, 2)}
    assert restored[1].sharding.is_equivalent_to(lane, 1)
    outs = []
    for s in (saved[0], restored[0]):
        k, run = jax.random.key(5), []
        for i in range(3, 6):
            s = add(s, jax.device_put(data(i), lane))
            k, sub = jax.random.split(k)
            s, b, info = sample(s, sub)
            run.append((s, b, info))
        outs.append(run)
    assert_bit_equal(outs[0], outs[1])
    assert add._cache_size() == 1 and sample._cache_size() == 1, (add._cache_size(), sample._cache_size())
    assert_bit_equal(jax.random.split(saved[1][3]), jax.random.split(restored[1][3]))

    # (b) another target sharding (2-device mesh, lanes replicated): the target's wins
    mesh2 = Mesh(np.array(jax.devices()[:2]), ("x",))
    other = NamedSharding(mesh2, P())
    target2 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=other), saved)
    restored2 = checkpoint.restore(directory, target2)
    assert_bit_equal(saved, restored2)
    for y in jax.tree.leaves(restored2):
        assert y.sharding.is_equivalent_to(other, y.ndim), y.sharding

    # (c) rlbuf.scaling.sharding.shard (per-device buffers under shard_map)
    srb = shard(rb, Mesh(np.array(jax.devices()), ("data",)), "data")
    sput = lambda d: jax.device_put(d, srb.sharding)  # noqa: E731
    s_add, s_sample = jax.jit(srb.add), jax.jit(srb.sample)
    state = srb.init(jax.tree.map(jnp.asarray, data(0)))
    for i in range(2):
        state = s_add(state, sput(data(i)))
        state, _, _ = s_sample(state, jax.random.key(i))
    checkpoint.save(directory, state)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = checkpoint.restore(directory, target)
    assert_bit_equal(state, restored)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert y.sharding.is_equivalent_to(srb.sharding, y.ndim), y.sharding
    outs = []
    for s in (state, restored):
        s = s_add(s, sput(data(7)))
        outs.append(s_sample(s, jax.random.key(9)))
    assert_bit_equal(outs[0], outs[1])
    assert s_add._cache_size() == 1 and s_sample._cache_size() == 1
    print("OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
