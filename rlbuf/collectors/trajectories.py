"""``split_trajectories``: TorchRL's padded ``[n_traj, max_len]`` view of a batch."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _tree


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


def _resolve_keys(batch: dict, prefix, trajectory_key) -> tuple[tuple, tuple]:
    """TorchRL's key resolution: ``(ids_key, mask_key)``. ``trajectory_key`` wins and the mask
    goes next to it; otherwise ``prefix`` (default ``"collector"`` when the batch has that
    entry, no prefix otherwise) gives ``(prefix, "traj_ids")`` and ``(prefix, "mask")``."""
    if trajectory_key is not None:
        ids_key = _tree.as_tuple(trajectory_key)
        return ids_key, ids_key[:-1] + ("mask",)
    if prefix is None and isinstance(batch, dict) and "collector" in batch:
        prefix = "collector"
    pre = () if prefix is None else _tree.as_tuple(prefix)
    return pre + ("traj_ids",), pre + ("mask",)


def _done_path(done_key) -> tuple:
    """TorchRL reads the done flag under ``"next"`` (``done_key="done"`` is ``("next","done")``);
    a key that already starts with ``"next"`` is taken as given."""
    key = _tree.as_tuple("done" if done_key is None else done_key)
    return key if key[0] == "next" else ("next",) + key


@jax.jit
def ids_from_done(done: jax.Array) -> jax.Array:
    """Trajectory ids ``[*B, T]`` (int32) from done flags ``[*B, T]`` (TorchRL's rule).

    Within each row (the flattened leading dims ``B``) a new trajectory starts after every
    done step; rows never share an id: row ``i`` continues from the largest id of row
    ``i - 1`` plus one. Equal to TorchRL's ids for ``[T]`` and ``[B, T]`` batches (TorchRL
    only offsets along the first batch dim, so its ``[W, B, T]`` ids collide across ``B``;
    here every row is offset).
    """
    shape = done.shape
    rows = done.reshape((-1, shape[-1])).astype(jnp.int32)
    started = jnp.concatenate([jnp.zeros_like(rows[:, :1]), rows[:, :-1]], axis=1)
    within = jnp.cumsum(started, axis=1)
    per_row = within[:, -1] + 1  # ids used by each row
    offset = jnp.cumsum(per_row) - per_row
    return (within + offset[:, None]).reshape(shape)


def split_trajectories(batch: dict, *, prefix=None, trajectory_key=None, done_key=None,
                       max_trajectories: int | None = None, max_length: int | None = None
                       ) -> dict:
    """Split a batch into one zero-padded row per trajectory (TorchRL's ``split_trajectories``).

    Keys, as TorchRL resolves them:

    - ``trajectory_key``: the trajectory ids; the mask is written next to it (its last name
      replaced by ``"mask"``). Default ``(prefix, "traj_ids")``.
    - ``prefix``: default ``"collector"`` when the batch has a ``"collector"`` entry, no prefix
      otherwise; gives ``(prefix, "traj_ids")`` and the mask ``(prefix, "mask")``. So a
      collector batch uses ``("collector","traj_ids")`` and gets ``("collector","mask")``.
    - ``done_key`` (default ``"done"``, read under ``"next"``): used only when the ids key is
      absent. Ids are then built from the done flags (:func:`ids_from_done`: a trajectory ends
      at each done step and at the end of each row) and written to the ids key of the output.
      Done flags are batch-shaped ``[*B, T]`` (rlbuf's layout, no trailing 1).

    The batch dims are the shape of the ids (e.g. ``[B, T]``). Every leaf
    ``[*batch_dims, ...]`` becomes ``[n_traj, max_len, ...]``: trajectories ordered by their
    first appearance in the row-major flattening of the batch dims, steps in that flattened
    order, padded with zeros; the mask (bool ``[n_traj, max_len]``) marks real steps. Steps
    of one id need not be contiguous (TorchRL assumes they are).

    Eagerly, ``n_traj`` and ``max_len`` are exact unless given. Under ``jit`` both
    ``max_trajectories`` and ``max_length`` are required (static); trajectories or steps beyond
    them are dropped and unused rows are all-padding (mask False).
    """
    ids_key, mask_key = _resolve_keys(batch, prefix, trajectory_key)
    if _tree.has(batch, ids_key):
        ids = jnp.asarray(_tree.get(batch, ids_key))
    else:
        dkey = _done_path(done_key)
        if not _tree.has(batch, dkey):
            raise KeyError(
                f"split_trajectories: the batch has neither trajectory ids at {_tree.key_str(ids_key)} "
                f"nor done flags at {_tree.key_str(dkey)} (pass trajectory_key= or done_key=)"
            )
        done = jnp.asarray(_tree.get(batch, dkey))
        if done.ndim == 0 or done.dtype != jnp.bool_:
            raise ValueError(
                f"split_trajectories: done flags {_tree.key_str(dkey)} must be bool [*B, T], got "
                f"{done.dtype}{list(done.shape)}"
            )
        ids = ids_from_done(done)
        batch = _tree.set_in(batch, ids_key, ids)
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
    for path, x in _tree.leaves_with_keys(batch):
        if jnp.shape(x)[:nb] != bdims:
            raise ValueError(
                f"split_trajectories: leaf {_tree.key_str(path)} of shape {jnp.shape(x)} does not start "
                f"with the batch dims {bdims} of {_tree.key_str(ids_key)}"
            )
    return _split(batch, ids, int(max_trajectories), int(max_length), mask_key)


@partial(jax.jit, static_argnums=(2, 3, 4))
def _split(batch: dict, ids: jax.Array, max_trajectories: int, max_length: int, mask_key: tuple) -> dict:
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
    return _tree.set_in(out, mask_key, mask)
