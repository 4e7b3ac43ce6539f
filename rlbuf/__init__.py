"""rlbuf: JAX-functional collectors and replay buffers in TorchRL's layout, usable inside jit."""

from rlbuf.replay_buffer import BufferState, ReplayBuffer
from rlbuf.samplers import RandomSampler, Sampler, SamplerWithoutReplacement
from rlbuf.storage import Layout, LazyTensorStorage
from rlbuf.writers import RoundRobinWriter, WriteInfo

__version__ = "0.1.0"

__all__ = [
    "BufferState",
    "Layout",
    "LazyTensorStorage",
    "RandomSampler",
    "ReplayBuffer",
    "RoundRobinWriter",
    "Sampler",
    "SamplerWithoutReplacement",
    "WriteInfo",
]
