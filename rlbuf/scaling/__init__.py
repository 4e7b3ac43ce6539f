"""Scaling out: one buffer's lanes split into groups over devices or workers, and the
multi-host helpers.

- :mod:`rlbuf.scaling.sharding`: ``shard(rb, mesh)`` -> ``ShardedReplayBuffer``, a buffer's
  lanes over the devices of a ``Mesh`` (and the sampling distribution of grouped buffers);
- :mod:`rlbuf.scaling.per_worker`: ``PerWorkerReplayBuffer``, a buffer's lanes over the
  workers of an asynchronous collector;
- :mod:`rlbuf.scaling.regrouping`: ``regroup``, a grouped state to another number of groups
  (a checkpoint of 4 devices resumed on 2);
- :mod:`rlbuf.scaling.distributed`: the multi-host recipe on ``jax.distributed``
  (``initialize``, ``data_mesh``, ``global_batch``, ``replicate``, ``local_part``); imported
  on first use (``from rlbuf.scaling import distributed``).

Collectors scale out too: :mod:`rlbuf.collectors.sharded` (``shard_collector``) and
:mod:`rlbuf.collectors.async_` (``MultiAsyncCollector``).
"""

from rlbuf.scaling.per_worker import PerWorkerReplayBuffer
from rlbuf.scaling.regrouping import regroup
from rlbuf.scaling.sharding import ShardedReplayBuffer, shard

__all__ = ["PerWorkerReplayBuffer", "ShardedReplayBuffer", "regroup", "shard"]
