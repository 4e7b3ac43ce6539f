"""Sample-time stages: what ``ReplayBuffer.sample`` does to a batch after gathering it, as one
ordered chain (optax's ``chain`` is the model).

A stage has two hooks, both pure:

- ``check(layout, storage) -> None``: called once by ``ReplayBuffer.init``; raise (naming the
  key) on settings that cannot work with what is stored, warn about doubtful ones;
- ``apply(batch, ctx) -> batch``: called by every ``sample`` (under ``jit``) with the batch
  the previous stage returned and a :class:`SampleContext` (the storage, its arrays, the ring
  view, the sampled index and ``info``), so a stage may read more of the storage (e.g.
  ``rlbuf.FrameStack`` gathers the older frames of each item).

Any plain function ``batch -> batch`` (e.g. ``rlbuf.MultiStep``) is a stage too: it is
wrapped in :class:`Function`. ``ReplayBuffer(transform=...)`` takes one stage or a tuple of
them (or ``chain(...)``); ``frame_stack=`` is the first stage of the chain when given.

Masked items (``info["mask"]`` False: padding, items the storage cannot return) arrive as
zeros: ``ReplayBuffer.sample`` zeroes them once, before the sampler's ``postprocess`` and the
stages. A stage that reads the storage must keep them zeros (``FrameStack`` repeats the
item's own, zeroed frame); a stage that only computes on the batch needs no care.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable


class SampleContext(NamedTuple):
    """What a stage's ``apply`` may read besides the batch.

    - ``storage``: the buffer's ``rlbuf.storages.base.Storage`` (its ``gather``/``breaks``);
    - ``data``: the storage's arrays (``BufferState.storage``);
    - ``ring``: the read-only ``rlbuf._ring.Ring`` view (``layout``, ``capacity``, ``logical``);
    - ``index``: ``(*lane_idx, t)``, int arrays ``[*S]``, where each item was gathered;
    - ``info``: the sampler's info (``"mask"`` bool ``[*S]`` when some items are padding).
    """

    storage: Any
    data: Any
    ring: Any
    # a field named `index` shadows tuple.index (allowed at runtime; the public name is kept)
    index: tuple  # type: ignore[assignment]
    info: dict


@runtime_checkable
class Stage(Protocol):
    """A sample-time stage (see the module docstring)."""

    def check(self, layout: Any, storage: Any) -> None: ...

    def apply(self, batch: Any, ctx: SampleContext) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Function:
    """A plain ``batch -> batch`` function as a stage (it reads nothing but the batch).

    Args:
      fn: a pure, jittable function of the batch (hashable, e.g. a module-level function or a
        frozen dataclass such as ``rlbuf.MultiStep``).
    """

    fn: Callable

    def check(self, layout: Any, storage: Any) -> None:
        pass

    def apply(self, batch: Any, ctx: SampleContext) -> Any:
        return self.fn(batch)


def as_stage(obj: Any, who: str = "ReplayBuffer") -> Stage:
    """``obj`` as a stage: itself if it has ``check`` and ``apply``, a :class:`Function` if it is
    a plain callable; anything else raises ``TypeError``."""
    if isinstance(obj, Stage):
        return obj
    if callable(obj):
        return Function(obj)
    raise TypeError(f"{who}: a stage must be a callable batch -> batch or have check/apply hooks, "
                    f"got {type(obj).__name__}")


@dataclasses.dataclass(frozen=True)
class Chain:
    """Stages run in order, each on the previous one's output; itself a stage.

    Args:
      stages: a tuple of stages (anything :func:`as_stage` accepts; nested chains are
        flattened).
    """

    stages: tuple = ()

    def __post_init__(self):
        if not isinstance(self.stages, tuple):
            raise TypeError(f"chain: stages must be a tuple, got {type(self.stages).__name__}")
        for s in self.stages:
            as_stage(s, "chain")  # raises on a non-stage now, not at the first sample

    @property
    def flat(self) -> tuple:
        """The stages as :class:`Stage` objects, nested chains expanded."""
        out: list[Stage] = []
        for s in self.stages:
            out.extend(s.flat if isinstance(s, Chain) else (as_stage(s, "chain"),))
        return tuple(out)

    def check(self, layout: Any, storage: Any) -> None:
        for s in self.flat:
            s.check(layout, storage)

    def apply(self, batch: Any, ctx: SampleContext) -> Any:
        for s in self.flat:
            batch = s.apply(batch, ctx)
        return batch


def chain(*stages: Any) -> Chain:
    """The stages run in the order given (``ReplayBuffer(transform=chain(a, b))`` is the same as
    ``transform=(a, b)``)."""
    return Chain(tuple(stages))
