"""Multi-host recipe helpers on ``jax.distributed`` (no home-made communication layer).

Recipe (the same script runs on every host; each process owns the lanes of its devices):

    import rlbuf                                   # does not start JAX's backend
    from rlbuf.scaling import distributed as dist
    dist.initialize("10.0.0.1:1234", num_processes=2, process_id=i)   # gloo on CPU
    import gymnax                                  # only now: gymnax computes at import, which
                                                   # starts the backend (initialize must precede it)
    from rlbuf.scaling.sharding import shard
    from rlbuf.collectors.sharded import shard_collector

    mesh = dist.data_mesh("data")                  # every device of every process, host-major
    collector = shard_collector(rlbuf.Collector(env, policy, frames_per_batch=F, num_envs=N), mesh)
    srb = shard(rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(M, ndim=2), batch_size=S), mesh)
    cstate = collector.init(key)                   # same key on every process
    bstate = srb.init(jax.eval_shape(collector.collect, cstate, params)[1])
    params = dist.replicate(params, mesh)          # the same value on every process
    collect, add, sample = jax.jit(collector.collect), jax.jit(srb.add, donate_argnums=0), jax.jit(srb.sample)
    cstate, batch = collect(cstate, params)        # each process steps its own envs
    bstate = add(bstate, batch)                    # each device writes its own lanes
    bstate, sample_batch, info = sample(bstate, key)   # [S, ...] global, sharded on axis 0
    params = learner_step(params, sample_batch)    # jit/shard_map; gradients pmean'd over "data"

Every process must call the same jitted functions with the same (replicated) keys and
parameters, in the same order (SPMD). Data produced outside JAX (host envs, files) enters as
a global array with :func:`global_batch`, each process passing its own lanes; results leave
with :func:`local_part` (this process's rows) or
``jax.experimental.multihost_utils.process_allgather`` (everything, for tests/logging).

On CPU (tests, CI) collectives need gloo (``jax_cpu_collectives_implementation="gloo"``) and a
test forces host devices per process with ``jax_num_cpu_devices``. :func:`initialize` does all
three; it must run before JAX's backend starts: before any JAX computation and before gymnax
is imported (``import rlbuf`` imports neither; ``rlbuf.envs`` loads gymnax on first use).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlbuf import _tree


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_count: int | None = None,
    cpu_collectives: str = "gloo",
    **kwargs: Any,
) -> None:
    """``jax.distributed.initialize`` plus the CPU settings multi-process runs need.

    Must run before any JAX computation in the process. ``local_device_count`` forces that many
    CPU devices in this process (tests); ``cpu_collectives`` picks the CPU collectives
    implementation (``"gloo"``; ``None`` leaves JAX's default). ``kwargs`` go to
    ``jax.distributed.initialize``.
    """
    try:
        if cpu_collectives is not None:
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        if local_device_count is not None:
            jax.config.update("jax_num_cpu_devices", int(local_device_count))
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"{e}\nrlbuf.distributed.initialize must run before JAX starts its backend: before any JAX "
            "computation and before importing gymnax (it builds arrays at import). See the recipe in "
            "rlbuf.scaling.distributed's docstring."
        ) from e


def data_mesh(axis_name: str = "data", devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process), ordered by
    ``(process_index, id)`` so each process's devices, hence its lanes, are contiguous."""
    devices = jax.devices() if devices is None else list(devices)
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (axis_name,))


def global_batch(local_data: Any, mesh: Mesh, axis_name: Any = "data") -> Any:
    """A global array per leaf from each process's own lanes (``jax.make_array_from_process_local_data``).

    ``local_data`` leaves ``[n_local, ...]`` (this process's share of the leading axis, in
    process order); the result has leaves ``[n_local * num_processes, ...]`` sharded on the
    leading axis over ``axis_name``. TorchRL-style tuple keys (``{("next", "obs"): x}``) become
    nesting, as in the buffers' ``add``.
    """
    sharding = NamedSharding(mesh, P(axis_name))
    local_data = _tree.nest(local_data, "distributed.global_batch")  # TorchRL-style tuple keys
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_data)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Replicate ``tree`` over ``mesh`` (every process must pass the same values, e.g. the
    initial policy parameters from the same key)."""
    sharding = NamedSharding(mesh, P())
    tree = _tree.nest(tree, "distributed.replicate")  # TorchRL-style tuple keys
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree
    )


def local_part(tree: Any) -> Any:
    """This process's rows of global arrays sharded on their leading axis (numpy), in global
    order; fully replicated arrays come back whole."""

    def part(x):
        if x.is_fully_replicated:
            return np.asarray(x.addressable_shards[0].data)
        shards = {}
        for s in x.addressable_shards:
            start = (s.index[0].start or 0) if s.index else 0
            shards.setdefault(start, np.asarray(s.data))
        return np.concatenate([shards[k] for k in sorted(shards)], axis=0)

    return jax.tree_util.tree_map(part, tree)
