"""A ~200 MB replay-buffer state for the killed-save test (shared by the test and ``big_save.py``)."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

LANES, CAPACITY, OBS = 4, 12_500, 1_000  # 4 * 12_500 * 1_000 float32 = 200 MB


def buffer() -> ReplayBuffer:
    return ReplayBuffer(storage=LazyTensorStorage(LANES * CAPACITY, ndim=2), sampler=SamplerWithoutReplacement(),
                        batch_size=32)


def example():
    return {"observation": jnp.zeros((LANES, 1, OBS), jnp.float32), "reward": jnp.zeros((LANES, 1), jnp.float32)}


def make_state(seed: int):
    """A full buffer whose contents depend on ``seed`` (random floats: incompressible, so the
    save takes a while)."""
    rb = buffer()
    state = rb.init(example())
    rng = np.random.default_rng(seed)
    storage = {
        "observation": jnp.asarray(rng.random((LANES, CAPACITY, OBS), dtype=np.float32)),
        "reward": jnp.asarray(rng.random((LANES, CAPACITY), dtype=np.float32)),
    }
    full = jnp.asarray(CAPACITY, jnp.int32)
    return dataclasses.replace(state, storage=storage, cursor=jnp.asarray(seed % CAPACITY, jnp.int32), count=full,
                               added=full + seed)
