"""rlbuf: JAX-functional collectors and replay buffers in TorchRL's layout, usable inside jit."""

from rlbuf import checkpoint, returns
from rlbuf.buffer import Buffer, SplittableBuffer
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
from rlbuf.ensemble import EnsembleState, ReplayBufferEnsemble
from rlbuf.frame_stack import FrameStack
from rlbuf.regrouping import regroup
from rlbuf.replay_buffer import BufferState, ReplayBuffer
from rlbuf.samplers import RandomSampler, Sampler, SamplerWithoutReplacement
from rlbuf.samplers.prioritized import PrioritizedSampler, set_alpha, set_beta
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.samplers.staleness import StalenessAwareSampler, set_policy_version
from rlbuf.sharding import PerWorkerReplayBuffer, ShardedReplayBuffer, shard
from rlbuf.stages import SampleContext, Stage, chain
from rlbuf.storages import CompactTensorStorage, Layout, LazyTensorStorage, Storage
from rlbuf.transforms import MultiStep, MultiStepTransform
from rlbuf.writers import MaxValueWriter, RoundRobinWriter, TensorDictMaxValueWriter, WriteInfo, Writer

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
]


def __getattr__(name):
    # rlbuf.envs imports gymnax, which runs JAX computations at import (starting the backend):
    # loaded on first use so `import rlbuf` leaves jax.distributed.initialize possible.
    # rlbuf.datasets needs minari (optional extra rlbuf[offline]): imported on first use too.
    if name in ("envs", "datasets"):
        import importlib

        return importlib.import_module(f"rlbuf.{name}")
    raise AttributeError(f"module 'rlbuf' has no attribute {name!r}")
