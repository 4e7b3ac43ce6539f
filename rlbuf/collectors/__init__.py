"""Collectors: TorchRL's data collectors as pure, jittable functions."""

from rlbuf.collectors.collector import Collector, CollectorState, SyncDataCollector
from rlbuf.collectors.iterate import CollectorIterator, iterate
from rlbuf.collectors.multi import MultiSyncCollector, MultiSyncDataCollector
from rlbuf.collectors.options import CollectorOptions
from rlbuf.collectors.protocols import CollectorLike, SplittableCollector
from rlbuf.collectors.trajectories import split_trajectories

__all__ = [
    "Collector",
    "CollectorIterator",
    "CollectorLike",
    "CollectorOptions",
    "CollectorState",
    "MultiSyncCollector",
    "MultiSyncDataCollector",
    "SplittableCollector",
    "SyncDataCollector",
    "iterate",
    "split_trajectories",
]
