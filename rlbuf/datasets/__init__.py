"""Offline data in and out of rlbuf's batch layout: Minari datasets.

    data = rlbuf.datasets.from_minari("cartpole/random-v0")     # [N] leaves, numpy
    state = rlbuf.datasets.fill_buffer(rb, "cartpole/random-v0", progress=True)  # chunked
    rlbuf.datasets.to_minari("cartpole/rlbuf-v0", batches, env="CartPole-v1")

minari is an optional dependency (``pip install 'rlbuf[offline]'``), imported only when a
function here is called, so ``import rlbuf`` (and ``import rlbuf.datasets``) stay cheap.
"""

from rlbuf.datasets.minari_in import DatasetCorruptError, fill_buffer, from_minari, iter_minari, load_minari_dataset
from rlbuf.datasets.minari_out import to_minari

__all__ = ["DatasetCorruptError", "fill_buffer", "from_minari", "iter_minari", "load_minari_dataset", "to_minari"]
