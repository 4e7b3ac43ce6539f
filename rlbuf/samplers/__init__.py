"""Samplers: each a frozen, hashable object of pure functions (see ``rlbuf.samplers.base``)."""

from rlbuf.samplers.base import Sampler
from rlbuf.samplers.random import RandomSampler
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement

__all__ = ["Sampler", "RandomSampler", "SamplerWithoutReplacement"]
