"""rlbuf: JAX-functional collectors and replay buffers in TorchRL's layout, usable inside jit.

The packages, as the parts of a training loop:

- :mod:`rlbuf.buffers`: ``ReplayBuffer`` and what runs around it (sample-time stages, frame
  stacking, n-step returns, ensembles, the ``Buffer`` protocols); its plug-ins are
  :mod:`rlbuf.storages`, :mod:`rlbuf.samplers` and :mod:`rlbuf.writers`;
- :mod:`rlbuf.collectors`: env steps into ``[B, T]`` batches (JAX envs, host envs, async workers);
- :mod:`rlbuf.envs`: environment suites behind one interface (loaded on first use);
- :mod:`rlbuf.returns`: GAE, TD(lambda), V-trace;
- :mod:`rlbuf.datasets`: offline data from and to Minari (loaded on first use);
- :mod:`rlbuf.checkpoint`: save and restore any state;
- :mod:`rlbuf.scaling`: buffers split over devices or workers, multi-host helpers.

Modules of earlier releases keep their paths (``rlbuf.replay_buffer``, ``rlbuf.sharding``,
``rlbuf.storage``, ...) as aliases of their new homes (``rlbuf._moved``).
"""

from rlbuf import _moved, checkpoint, returns
from rlbuf.buffers.ensemble import EnsembleState, ReplayBufferEnsemble
from rlbuf.buffers.frame_stack import FrameStack
from rlbuf.buffers.protocols import Buffer, SplittableBuffer
from rlbuf.buffers.replay_buffer import BufferState, ReplayBuffer
from rlbuf.buffers.stages import SampleContext, Stage, chain
from rlbuf.buffers.transforms import MultiStep, MultiStepTransform
from rlbuf.collectors import (
    Collector,
    CollectorIterator,
    CollectorLike,
    CollectorOptions,
    CollectorState,
    MultiSyncCollector,
    MultiSyncDataCollector,
    SplittableCollector,
    SyncDataCollector,
    iterate,
    split_trajectories,
)
from rlbuf.collectors.async_ import MultiAsyncCollector, MultiaSyncDataCollector
from rlbuf.collectors.host import HostCollector, HostCollectorState
from rlbuf.collectors.sharded import ShardedCollector, shard_collector
from rlbuf.samplers import RandomSampler, Sampler, SamplerWithoutReplacement
from rlbuf.samplers.prioritized import PrioritizedSampler, set_alpha, set_beta
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.staleness import StalenessAwareSampler, set_policy_version
from rlbuf.scaling.regrouping import regroup
from rlbuf.scaling.sharding import PerWorkerReplayBuffer, ShardedReplayBuffer, shard
from rlbuf.storages import CompactTensorStorage, Layout, LazyTensorStorage, Storage
from rlbuf.writers import MaxValueWriter, RoundRobinWriter, TensorDictMaxValueWriter, WriteInfo, Writer

# The old module paths (rlbuf.replay_buffer, rlbuf.sharding, ...) import as their new modules.
_moved.install()

__version__ = "0.3.0"

__all__ = [
    "Collector",
    "CollectorIterator",
    "CollectorState",
    "MultiSyncCollector",
    "MultiSyncDataCollector",
    "SyncDataCollector",
    "iterate",
    "split_trajectories",
    "CollectorLike",
    "CollectorOptions",
    "SplittableCollector",
    "envs",
    "HostCollector",
    "HostCollectorState",
    "MultiAsyncCollector",
    "MultiaSyncDataCollector",
    "ShardedCollector",
    "shard_collector",
    "PerWorkerReplayBuffer",
    "ShardedReplayBuffer",
    "shard",
    "PrioritizedSliceSampler",
    "BufferState",
    "EnsembleState",
    "ReplayBufferEnsemble",
    "datasets",
    "Layout",
    "CompactTensorStorage",
    "FrameStack",
    "LazyTensorStorage",
    "MaxValueWriter",
    "MultiStep",
    "MultiStepTransform",
    "PrioritizedSampler",
    "set_alpha",
    "set_beta",
    "RandomSampler",
    "ReplayBuffer",
    "RoundRobinWriter",
    "Sampler",
    "SamplerWithoutReplacement",
    "SliceSampler",
    "SliceSamplerWithoutReplacement",
    "Storage",
    "TensorDictMaxValueWriter",
    "WriteInfo",
    "Writer",
    "Buffer",
    "SplittableBuffer",
    "SampleContext",
    "Stage",
    "chain",
    "checkpoint",
    "returns",
    "StalenessAwareSampler",
    "set_policy_version",
    "regroup",
    "buffers",
    "scaling",
]


def __getattr__(name):
    # rlbuf.envs imports gymnax, which runs JAX computations at import (starting the backend):
    # loaded on first use so `import rlbuf` leaves jax.distributed.initialize possible.
    # rlbuf.datasets needs minari (optional extra rlbuf[offline]): imported on first use too.
    # An old module path (rlbuf.sharding, rlbuf.distributed, ...): the module at its new home.
    if name in ("envs", "datasets") or f"rlbuf.{name}" in _moved.MOVED:
        import importlib

        return importlib.import_module(f"rlbuf.{name}")
    raise AttributeError(f"module 'rlbuf' has no attribute {name!r}")
