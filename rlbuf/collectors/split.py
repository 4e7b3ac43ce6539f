"""``split_trajectories``: TorchRL's padded ``[n_traj, max_len]`` view of a batch."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _get(tree: Any, key) -> Any:
    for k in (key,) if isinstance(key, str) else key:
        tree = tree[k]
    return tree


def _slots(flat_ids: jax.Array):
    """For the row-major flattened ids ``[N]``: ``order`` (a permutation grouping equal ids,
    keeping flat order within a group), and for each ``order`` entry its trajectory rank (by
    first appearance) and its position within the trajectory."""
    n = flat_ids.shape[0]
    order = jnp.argsort(flat_ids, stable=True)
    s = flat_ids[order]
    new = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    group = jnp.cumsum(new.astype(jnp.int32)) - 1
    idx = jnp.arange(n, dtype=jnp.int32)
    start = jax.lax.cummax(jnp.where(new, idx, 0))
    pos = idx - start
    # stable sort: order[start] is the first (smallest flat index) element of each group
    group_first = jnp.full((n,), n, jnp.int32).at[group].min(order.astype(jnp.int32))
    rank_of_group = jnp.argsort(jnp.argsort(group_first, stable=True), stable=True)
    return order, rank_of_group[group].astype(jnp.int32), pos


def split_trajectories(batch: dict, *, trajectory_key=("collector", "traj_ids"),
                       max_trajectories: int | None = None, max_length: int | None = None
                       ) -> dict:
    """Split a batch into one zero-padded row per trajectory (TorchRL's ``split_trajectories``).

    The batch dims are the shape of ``batch[trajectory_key]`` (e.g. ``[B, T]``). Every leaf
    ``[*batch_dims, ...]`` becomes ``[n_traj, max_len, ...]``: trajectories ordered by their
    first appearance in the row-major flattening of the batch dims, steps in that flattened
    order, padded with zeros. ``("collector","mask")`` (bool ``[n_traj, max_len]``) marks real
    steps.

    Eagerly, ``n_traj`` and ``max_len`` are exact unless given. Under ``jit`` both
    ``max_trajectories`` and ``max_length`` are required (static); trajectories or steps beyond
    them are dropped and unused rows are all-padding (mask False).
    """
    ids = jnp.asarray(_get(batch, trajectory_key))
    bdims = ids.shape
    nb, n = len(bdims), int(np.prod(bdims, dtype=np.int64))
    flat_ids = ids.reshape(n)
    if max_trajectories is None or max_length is None:
        if isinstance(flat_ids, jax.core.Tracer):
            raise ValueError(
                "split_trajectories under jit needs static max_trajectories and max_length "
                f"(got max_trajectories={max_trajectories}, max_length={max_length})"
            )
        _, counts = np.unique(np.asarray(flat_ids), return_counts=True)
        if max_trajectories is None:
            max_trajectories = len(counts)
        if max_length is None:
            max_length = int(counts.max()) if len(counts) else 0
    for x in jax.tree.leaves(batch):
        if jnp.shape(x)[:nb] != bdims:
            raise ValueError(
                f"leaf of shape {jnp.shape(x)} does not start with the batch dims {bdims} of "
                f"{trajectory_key}"
            )
    return _split(batch, ids, int(max_trajectories), int(max_length))


@partial(jax.jit, static_argnums=(2, 3))
def _split(batch: dict, ids: jax.Array, max_trajectories: int, max_length: int) -> dict:
    # one compiled function instead of many eagerly dispatched (and compiled) ops
    bdims = ids.shape
    nb, n = len(bdims), int(np.prod(bdims, dtype=np.int64))
    order, traj, pos = _slots(ids.reshape(n))

    def pad(x):
        src = x.reshape((n,) + x.shape[nb:])[order]
        out = jnp.zeros((max_trajectories, max_length) + x.shape[nb:], x.dtype)
        return out.at[traj, pos].set(src, mode="drop")

    out = jax.tree.map(pad, batch)
    mask = jnp.zeros((max_trajectories, max_length), bool).at[traj, pos].set(True, mode="drop")
    out["collector"] = {**out.get("collector", {}), "mask": mask}
    return out
