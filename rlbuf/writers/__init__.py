"""Writers: each a frozen, hashable object of pure functions (see ``rlbuf.writers.base``)."""

from rlbuf.writers.base import TIME_ORDER, WriteInfo, Writer
from rlbuf.writers.max_value import MaxValueWriter, TensorDictMaxValueWriter
from rlbuf.writers.round_robin import RoundRobinWriter

__all__ = ["TIME_ORDER", "MaxValueWriter", "RoundRobinWriter", "TensorDictMaxValueWriter", "WriteInfo", "Writer"]
