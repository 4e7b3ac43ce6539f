"""One of two ``jax.distributed`` processes on 127.0.0.1 (run by test_multihost.py).

argv: process_id port out_json. Each process has 2 forced CPU devices (4 global) and gloo
collectives. It collects with a sharded collector, adds to a sharded buffer, samples, runs one
data-parallel learner step (gradients pmean'd over the mesh), adds a batch built from
process-local host data, and writes what it saw to ``out_json`` for the parent to compare.
"""

import json
import sys

pid, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

import jax  # noqa: E402

# before importing rlbuf: importing gymnax starts JAX's backend (see rlbuf.scaling.distributed)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from rlbuf._shard_map import shard_map as _shard_map  # noqa: E402
from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.collectors.collector import Collector  # noqa: E402
from rlbuf.collectors.sharded import shard_collector  # noqa: E402
from rlbuf.envs import GroundTruthEnv  # noqa: E402
from rlbuf.scaling import distributed as dist  # noqa: E402
from rlbuf.scaling.sharding import shard  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

res = {"process_count": jax.process_count(), "device_count": jax.device_count(),
       "local_device_count": jax.local_device_count()}
mesh = dist.data_mesh("data")
N, T = 8, 6
env = GroundTruthEnv()
collector = shard_collector(
    Collector(env, lambda p, obs, k: (obs[:, 2] % 3).astype(jnp.int32), frames_per_batch=N * T, num_envs=N,
              env_params=env.make_params(N, min_length=2, max_length=5)),
    mesh,
)
srb = shard(ReplayBuffer(storage=LazyTensorStorage(N * 16, ndim=2), batch_size=16), mesh)

cstate = collector.init(jax.random.key(0))
cstate, batch = jax.jit(collector.collect)(cstate, None)
bstate = srb.init(batch)
bstate = jax.jit(srb.add, donate_argnums=0)(bstate, batch)

# data made on the host, process-locally: this process's 4 lanes of a [8, 3] batch
host_local = jax.tree_util.tree_map(lambda x: np.asarray(x), dist.local_part(batch))
rebuilt = dist.global_batch(host_local, mesh)
same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), rebuilt, batch)
res["rebuilt_equal"] = all(jax.tree_util.tree_leaves(same))
bstate = jax.jit(srb.add, donate_argnums=0)(bstate, rebuilt)

bstate, sample, info = jax.jit(srb.sample)(bstate, jax.random.key(1))

# one data-parallel learner step: a linear value fit, grads pmean'd over the data axis
params = dist.replicate({"w": np.zeros((4,), np.float32), "b": np.zeros((), np.float32)}, mesh)


def loss(p, obs, target):
    return jnp.mean((obs.astype(jnp.float32) @ p["w"] + p["b"] - target) ** 2)


def step(p, obs, target):
    g = jax.grad(loss)(p, obs, target)
    g = jax.lax.pmean(g, "data")
    l = jax.lax.pmean(loss(p, obs, target), "data")
    return jax.tree_util.tree_map(lambda a, b: a - 1e-3 * b, p, g), l


learn = jax.jit(_shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()),
                           check_vma=False))
new_params, l = learn(params, sample["observation"], sample["next"]["reward"])

def full(x):
    return multihost_utils.process_allgather(x, tiled=True)


res["traj_ids"] = np.asarray(full(batch["collector"]["traj_ids"])).tolist()
res["observation"] = np.asarray(full(batch["observation"])).tolist()
res["sample_obs"] = np.asarray(full(sample["observation"])).tolist()
res["sample_index"] = [np.asarray(full(i)).tolist() for i in info["index"]]
res["storage_obs"] = np.asarray(full(srb.global_storage(bstate)["observation"])).tolist()
res["count"] = np.asarray(full(bstate.count)).tolist()
res["local_traj_ids"] = dist.local_part(batch["collector"]["traj_ids"]).tolist()
res["params"] = jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), dist.local_part(new_params))
res["loss"] = float(np.asarray(dist.local_part(l)))
# the learner step computed by hand on the gathered sample
obs = np.asarray(full(sample["observation"]), np.float32)
tgt = np.asarray(full(sample["next"]["reward"]), np.float32)
err = obs @ np.zeros(4, np.float32) - tgt
res["loss_ref"] = float(np.mean(err ** 2))
res["w_ref"] = (-1e-3 * 2 * obs.T @ err / len(err)).tolist()
with open(out, "w") as f:
    json.dump(res, f)
jax.distributed.shutdown()
