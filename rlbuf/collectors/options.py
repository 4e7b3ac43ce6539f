"""``CollectorOptions``: the options every collector shares, declared once.

:class:`rlbuf.Collector`, :class:`rlbuf.MultiSyncCollector` and
:class:`rlbuf.MultiAsyncCollector` are dataclasses that extend ``CollectorOptions`` (so their
keyword signatures carry every option), and :class:`rlbuf.HostCollector` builds one from its
keywords. Each collector hands its ``options`` on whole (``MultiSyncCollector`` to the flat
``Collector`` that does its work, ``MultiAsyncCollector`` to its workers, ``split`` to the
groups), and the code that uses an option reads it from there: adding an option is one field
here plus its use (in :mod:`rlbuf.collectors._rollout` for the jittable collectors).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import numpy as np

from rlbuf.collectors._counters import frames_limit


def positive_int(x: Any) -> bool:
    return bool(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CollectorOptions:
    """What a collector does with its envs and policy, independent of which envs and how many.

    Args:
        frames_per_batch: frames per ``collect`` over all the collector's envs (one worker's
            batch for :class:`rlbuf.MultiAsyncCollector`); ``T = frames_per_batch // B``.
        max_frames_per_traj: truncate (``("next","truncated")``) and reset an episode at its
            ``n``-th step. ``None`` (or ``<= 0``) disables.
        init_random_frames: a batch uses random actions when fewer than this many frames were
            collected before it (TorchRL's rule, so it rounds up to whole batches).
        reset_at_each_iter: reset every env at the start of each ``collect`` (except the first),
            giving them fresh trajectory ids.
        postproc: a pure function applied to each batch inside ``collect``.
        policy_carry: ``init_fn(num_envs) -> carry``: the policy's recurrent state (leaves
            ``[B, ...]``), reset where an env starts an episode; the policy is then
            ``policy(params, observation, key, carry) -> (action, extras, new_carry)``.
        store_carry: with ``policy_carry``, store the carry the policy received at each step at
            ``("collector", "carry")``.
    """

    frames_per_batch: int
    max_frames_per_traj: int | None = None
    init_random_frames: int = 0
    reset_at_each_iter: bool = False
    postproc: Callable | None = None
    policy_carry: Callable | None = None
    store_carry: bool = False

    def __post_init__(self):
        fpb = self.frames_per_batch
        if not positive_int(fpb):
            raise ValueError(f"frames_per_batch must be a positive int, got {fpb!r}")
        if self.random_frames > frames_limit():
            raise ValueError(
                f"init_random_frames={self.init_random_frames} exceeds the frames counter's limit "
                f"{frames_limit()} (enable jax_enable_x64 for an int64 counter)"
            )
        if self.store_carry and self.policy_carry is None:
            raise ValueError("store_carry=True needs policy_carry")

    @property
    def options(self) -> "CollectorOptions":
        """Just the options (a plain ``CollectorOptions``, also for a collector extending it)."""
        return CollectorOptions(**self.option_kwargs())

    def option_kwargs(self, **changes: Any) -> dict:
        """The options as keywords (with ``changes``), to build another collector with them."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(CollectorOptions)}
        kw.update(changes)
        return kw

    @property
    def max_frames(self) -> int | None:
        """``max_frames_per_traj`` as used: None when disabled."""
        mf = self.max_frames_per_traj
        return None if mf is None or mf <= 0 else int(mf)

    @property
    def random_frames(self) -> int:
        return int(self.init_random_frames or 0)

    @property
    def with_carry(self) -> bool:
        return self.policy_carry is not None


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CollectorOptions))


def with_option_keywords(init: Callable) -> Callable:
    """``init`` (taking the options as ``**options``) with a signature that lists every option as
    a keyword, for ``help`` and ``inspect`` (the options stay declared once, above)."""
    sig = inspect.signature(init)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for f in dataclasses.fields(CollectorOptions):
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=f.type))
    # inspect reads a function's __signature__; the Callable type does not declare it
    init.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return init
