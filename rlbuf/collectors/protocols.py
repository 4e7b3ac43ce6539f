"""What "a collector" is: the protocols :func:`rlbuf.iterate` and :func:`rlbuf.shard_collector`
accept (``typing.Protocol``, as optax's ``GradientTransformation`` states what an optimizer is).

Any object with these members works; nothing checks its class. The built-in collectors
implement them: :class:`rlbuf.Collector`, :class:`rlbuf.MultiSyncCollector` and
:class:`rlbuf.ShardedCollector` (jittable), :class:`rlbuf.HostCollector` (``jittable=False``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from rlbuf.collectors._groups import CollectorGroups


@runtime_checkable
class CollectorLike(Protocol):
    """A collector :func:`rlbuf.iterate` can drive.

    Attributes:
        jittable: whether ``init`` and ``collect`` are pure JAX functions (``iterate`` then
            compiles them once); False for host collectors, called as they are.
        frames_per_batch: frames of one batch.
        batch_shape: leading dims of every leaf of a batch (time last: ``(T,)``, ``(B, T)``,
            ``(W, B, T)``).
    """

    # read-only properties: a frozen dataclass's fields (or a plain class attribute) satisfy them
    @property
    def jittable(self) -> bool: ...

    @property
    def frames_per_batch(self) -> int: ...

    @property
    def batch_shape(self) -> tuple[int, ...]: ...

    def init(self, key: jax.Array) -> Any:
        """The initial collector state."""

    def collect(self, state: Any, policy_params: Any = None, *, policy_version: Any = None) -> tuple[Any, Any]:
        """``(new_state, batch)``; with ``policy_version`` (an int scalar, traced under jit) the
        batch holds it at ``("collector", "policy_version")``, int32 ``batch_shape``."""


@runtime_checkable
class SplittableCollector(CollectorLike, Protocol):
    """A jittable collector whose envs can be split into groups (devices, async workers):
    what :func:`rlbuf.shard_collector` accepts."""

    def split(self, n_groups: int, who: str = ...) -> CollectorGroups:
        """The collector's envs in ``n_groups`` equal groups (raises naming ``who`` when they
        cannot be split so); :meth:`CollectorGroups.map` wraps the groups' collectors."""


def require_collector(obj: Any, who: str, protocol: type = CollectorLike) -> None:
    """Raise a ``TypeError`` naming the members ``obj`` lacks to implement ``protocol``."""
    members: tuple[str, ...] = ("jittable", "frames_per_batch", "batch_shape", "init", "collect")
    if protocol is SplittableCollector:
        members += ("split",)
    missing = [m for m in members if not hasattr(obj, m)]
    if missing:
        raise TypeError(f"{who}: {type(obj).__name__} does not implement rlbuf.{protocol.__name__}: "
                        f"missing {', '.join(missing)}")
