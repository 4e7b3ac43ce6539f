"""One of two ``jax.distributed`` processes on 127.0.0.1 for the multi-host checkpoint test:
``python multihost_roundtrip.py PROCESS_ID PORT DIRECTORY OUT_JSON``.

Each process has 2 forced CPU devices (4 global). A ``rlbuf.scaling.sharding.shard`` buffer over all 4
devices, filled from process-local host data, plus per-lane typed PRNG keys sharded the same
way, is saved by both processes into one directory (orbax writes each process's shards),
restored with the target's shardings, and continued; each process reports whether its own
shards are byte-identical to the never-stopped run's.
"""

import json
import sys

pid, port, directory, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

from rlbuf.scaling import distributed as dist  # noqa: E402

dist.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, local_device_count=2)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint  # noqa: E402, F401  (see the note below)
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from rlbuf import checkpoint  # noqa: E402
from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement  # noqa: E402
from rlbuf.scaling.sharding import shard  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

# jax 0.12: the first import of orbax bumps jax's trace context, so every function jitted before it
# compiles once more; import it up front so the no-recompile checks below test restore only.

N, CAP = 8, 6
mesh = dist.data_mesh("data")
srb = shard(ReplayBuffer(storage=LazyTensorStorage(N * CAP, ndim=2), sampler=SamplerWithoutReplacement(),
                         batch_size=8), mesh)


def local_batch(i):
    """This process's 4 lanes of the i-th global [8, 3] batch (host data, made locally)."""
    lanes = np.arange(pid * N // 2, (pid + 1) * N // 2)[:, None]
    ids = (i * 100 + lanes * 10 + np.arange(3)).astype(np.int32)
    return {"obs": np.stack([ids, -ids], -1).astype(np.float32), "id": ids}


def local_bytes(tree):
    """This process's shards of every leaf (typed keys as key_data), as bytes."""
    out = []
    for x in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(b"".join(np.asarray(s.data).tobytes() for s in sorted(
            x.addressable_shards, key=lambda s: s.device.id)))
    return out


add, sample = jax.jit(srb.add), jax.jit(srb.sample)
state = srb.init(dist.global_batch(local_batch(0), mesh))
for i in range(3):
    state = add(state, dist.global_batch(local_batch(i), mesh))
    state, _, _ = sample(state, jax.random.key(i))
keys = jax.jit(lambda: jax.random.split(jax.random.key(3), N), out_shardings=NamedSharding(mesh, P("data")))()
saved = (state, keys)
checkpoint.save(directory, saved)

target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), saved)
restored = checkpoint.restore(directory, target)
res = {
    "restored_equal": local_bytes(saved) == local_bytes(restored),
    "shardings_equal": all(y.sharding.is_equivalent_to(x.sharding, x.ndim)
                           for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(restored))),
}
runs = []
for s in (saved[0], restored[0]):
    s = add(s, dist.global_batch(local_batch(7), mesh))
    runs.append(local_bytes(sample(s, jax.random.key(9))))
res["continue_equal"] = runs[0] == runs[1]
res["compiles"] = [add._cache_size(), sample._cache_size()]
with open(out, "w") as f:
    json.dump(res, f)
