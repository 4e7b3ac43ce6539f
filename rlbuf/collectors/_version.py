"""Policy-version stamps: the version of the parameters that acted, stored with the batch."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

VERSION_KEY = ("collector", "policy_version")


def stamp_version(batch: dict, version: Any, batch_shape: tuple[int, ...]) -> dict:
    """``batch`` with ``version`` (an int scalar, possibly traced) at ``("collector",
    "policy_version")`` as int32 ``batch_shape``; unchanged when ``version`` is None."""
    if version is None:
        return batch
    v = jnp.asarray(version)
    if v.ndim != 0 or not jnp.issubdtype(v.dtype, jnp.integer):
        raise TypeError(f"policy_version must be an int scalar, got shape {v.shape} dtype {v.dtype}")
    stamped = jnp.broadcast_to(v.astype(jnp.int32), batch_shape)
    return {**batch, "collector": {**batch.get("collector", {}), "policy_version": stamped}}
