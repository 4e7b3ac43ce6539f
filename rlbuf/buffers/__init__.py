"""Replay buffers: the buffer itself and what runs around its storage, sampler and writer.

- :mod:`rlbuf.buffers.protocols`: what "a buffer" is, the ``Buffer`` and ``SplittableBuffer``
  protocols (the group wrappers in :mod:`rlbuf.scaling` and the ensemble accept any
  ``SplittableBuffer``);
- :mod:`rlbuf.buffers.replay_buffer`: ``ReplayBuffer`` (storage x sampler x writer x
  transform, pure functions over a ``BufferState``);
- :mod:`rlbuf.buffers.stages`: the sample-time stage seam (``Stage``, ``SampleContext``,
  ``chain``) that ``transform=`` and ``frame_stack=`` plug into;
- :mod:`rlbuf.buffers.frame_stack`: ``FrameStack``, frames stacked at sample time;
- :mod:`rlbuf.buffers.transforms`: ``MultiStep``, n-step returns at sample time;
- :mod:`rlbuf.buffers.ensemble`: ``ReplayBufferEnsemble``, several buffers sampled as one.

Storages, samplers and writers, the buffer's three plug-ins, are :mod:`rlbuf.storages`,
:mod:`rlbuf.samplers` and :mod:`rlbuf.writers`.
"""

from rlbuf.buffers.ensemble import EnsembleState, ReplayBufferEnsemble
from rlbuf.buffers.frame_stack import FrameStack
from rlbuf.buffers.protocols import Buffer, SplittableBuffer
from rlbuf.buffers.replay_buffer import BufferState, ReplayBuffer
from rlbuf.buffers.stages import SampleContext, Stage, chain
from rlbuf.buffers.transforms import MultiStep, MultiStepTransform

__all__ = [
    "Buffer",
    "BufferState",
    "EnsembleState",
    "FrameStack",
    "MultiStep",
    "MultiStepTransform",
    "ReplayBuffer",
    "ReplayBufferEnsemble",
    "SampleContext",
    "SplittableBuffer",
    "Stage",
    "chain",
]
