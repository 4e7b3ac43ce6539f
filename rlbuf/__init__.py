"""rlbuf: JAX-functional collectors and replay buffers in TorchRL's layout, usable inside jit."""

from rlbuf import checkpoint, envs
from rlbuf.collectors import (
    Collector,
    CollectorIterator,
    CollectorState,
    MultiSyncCollector,
    MultiSyncDataCollector,
    SyncDataCollector,
    iterate,
    split_trajectories,
)
from rlbuf.replay_buffer import BufferState, ReplayBuffer
from rlbuf.samplers import RandomSampler, Sampler, SamplerWithoutReplacement
from rlbuf.samplers.prioritized import PrioritizedSampler
from rlbuf.samplers.prioritized_slice import PrioritizedSliceSampler
from rlbuf.samplers.slice import SliceSampler, SliceSamplerWithoutReplacement
from rlbuf.storage import Layout, LazyTensorStorage
from rlbuf.transforms import MultiStep, MultiStepTransform
from rlbuf.writers import RoundRobinWriter, WriteInfo
from rlbuf.writers_max import MaxValueWriter, TensorDictMaxValueWriter

__version__ = "0.1.0"

__all__ = [
    "Collector",
    "CollectorIterator",
    "CollectorState",
    "MultiSyncCollector",
    "MultiSyncDataCollector",
    "SyncDataCollector",
    "iterate",
    "split_trajectories",
    "envs",
    "PrioritizedSliceSampler",
    "BufferState",
    "Layout",
    "LazyTensorStorage",
    "MaxValueWriter",
    "MultiStep",
    "MultiStepTransform",
    "PrioritizedSampler",
    "RandomSampler",
    "ReplayBuffer",
    "RoundRobinWriter",
    "Sampler",
    "SamplerWithoutReplacement",
    "SliceSampler",
    "SliceSamplerWithoutReplacement",
    "TensorDictMaxValueWriter",
    "WriteInfo",
    "checkpoint",
]
