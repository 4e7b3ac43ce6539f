"""TorchRL's reductions of per-item values with extra dims (``max``, ``min``, ``mean``,
``median``, ``sum``), shared by ``MaxValueWriter(reduction=...)`` and the prioritized
samplers' ``reduction`` (a priority ``[*S, *E]`` for an index ``[*S]``).

``median`` is the *lower* median (for an even count, the smaller of the two middle values),
as ``torch.median`` returns it, not numpy's average of the two.
"""

from __future__ import annotations

import jax.numpy as jnp

REDUCTIONS = ("max", "min", "mean", "median", "sum")


def check(reduction, owner: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_trailing(x, lead: int, reduction: str):
    """``x`` ``[*S, *E]`` reduced over its dims after the first ``lead`` ones to ``[*S]``
    (``x`` unchanged when there are no extra dims). Empty extra dims are an error of the caller."""
    if x.ndim == lead:
        return x
    flat = x.reshape(x.shape[:lead] + (-1,))
    if reduction == "median":
        k = (flat.shape[-1] - 1) // 2
        return jnp.sort(flat, axis=-1)[..., k]
    return getattr(jnp, reduction)(flat, axis=-1)
