"""Collectors: TorchRL's data collectors as pure, jittable functions."""

from rlbuf.collectors.collector import Collector, CollectorState, SyncDataCollector
from rlbuf.collectors.iterate import CollectorIterator, iterate
from rlbuf.collectors.multi import MultiSyncCollector, MultiSyncDataCollector
from rlbuf.collectors.split import split_trajectories

__all__ = [
    "Collector",
    "CollectorIterator",
    "CollectorState",
    "MultiSyncCollector",
    "MultiSyncDataCollector",
    "SyncDataCollector",
    "iterate",
    "split_trajectories",
]
