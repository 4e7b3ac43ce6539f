"""``shard_map`` across JAX versions (``jax.shard_map`` since 0.7; the experimental one before)."""

from __future__ import annotations

import jax

if getattr(jax, "shard_map", None) is not None:

    def shard_map(f, *, mesh, in_specs, out_specs, check_vma=False):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma)

else:  # pragma: no cover - jax < 0.7
    from jax.experimental.shard_map import shard_map as _legacy_shard_map

    def shard_map(f, *, mesh, in_specs, out_specs, check_vma=False):
        return _legacy_shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma)
