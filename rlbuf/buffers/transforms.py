"""Sample-time transforms: pure functions applied to each sampled batch
(``ReplayBuffer(transform=...)``).

``MultiStep(n_steps, gamma)`` turns slices of consecutive steps into n-step transitions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _tree
from rlbuf.returns import n_step_return


def _under_next(key) -> tuple:
    """TorchRL names reward and done keys relative to ``"next"`` (``"reward"`` is
    ``("next", "reward")``); a key that already starts with ``"next"`` is taken as given."""
    key = _tree.as_tuple(key)
    return key if key[0] == "next" else ("next",) + key


def _strip_ones(shape: tuple) -> tuple:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


class _Keys(NamedTuple):
    reward: tuple
    done: tuple
    done_key: tuple
    terminated: tuple
    mask: Optional[tuple]


@dataclasses.dataclass(frozen=True)
class MultiStep:
    """n-step returns over slices: a frozen, hashable, jittable ``batch -> batch`` function.

    Input: a batch whose leaves are ``[*B, T, ...]`` with ``batch_ndim = len(B) + 1`` batch
    dims, time last (``[num_slices, slice_len, ...]`` from a slice sampler; ``batch_ndim=2``
    by default). The slice of each row is treated as consecutive steps in time.

    Keys use TorchRL's names; a key not starting with ``"next"`` is read under ``"next"``, so
    ``"reward"`` and ``("next", "reward")`` are the same key; lists are accepted.

    Args:
        n_steps: the longest window, ``>= 1``.
        gamma: the discount in [0, 1].
        reward_keys: every reward summed over the window (``("reward",)``).
        done_keys: the end-of-episode flags; those present are or-ed to stop windows (at least
            one must be present).
        done_key: the flag that forbids bootstrapping when ``terminated_key`` is not stored
            (else the or of the present done keys).
        terminated_key: the flag that forbids bootstrapping (``"nonterminal"``).
        mask_key: real steps, optional (a full key).
        batch_ndim: ``len(B) + 1``, the batch dims of the input, time last.
        reward_key: rlbuf's first-release name; when given it replaces ``reward_keys``.
        end_keys: rlbuf's first-release name; when given it replaces ``done_keys``.

    Flags with extra per-step dims (TorchRL's ``test_unusual_done``, e.g. one done per agent):
    done flags ``[*B, T, *E]`` (trailing 1s ignored; flags without ``E`` are broadcast) give
    one window per element of ``E``. Every reward and every ``"next"`` leaf must then be
    ``[*B, T, *E, ...]``, and the outputs below are ``[*B, T, *E]`` instead of ``[*B, T]``.

    For each step ``t`` let ``k`` (``1 <= k <= n_steps``) be the number of steps the n-step
    window spans: it grows from step ``t`` and stops *after* the first step ``j`` that

    - ends an episode (one of the present ``done_keys`` is True), or
    - is the row's last step ``T - 1``, or is followed by a padding step (``mask_key``), or
    - is step ``t + n_steps - 1``.

    Output (a new batch; inputs untouched), at each step ``t`` with ``last = t + k - 1``:

    - each reward key ``("next", *p, name)``: ``sum_{i<k} gamma**i * reward[t + i]``; the
      one-step reward is kept as ``("next", *p, "original_" + name)`` (so
      ``("next","original_reward")``, TorchRL's name).
    - every other ``"next"`` leaf (observation, done, terminated, truncated, ...): its value at
      step ``last``. So ``("next","terminated")`` is True iff the window ended on a true
      termination (no bootstrap), and a window cut by truncation or the slice end keeps
      ``terminated`` False (bootstrap from ``("next","observation")`` of step ``last``).
    - ``"steps_to_next_obs"``: int32 ``[*B, T]``, ``k`` (TorchRL's key).
    - ``"gamma"``: float32 ``[*B, T]``, ``gamma ** k``: the discount of the bootstrap value.
    - ``"nonterminal"``: bool ``[*B, T]``, ``not terminated[last]``. The n-step target is
      ``reward + gamma * nonterminal * V(next observation)``.

    Padding (``mask_key`` present in the batch and False, e.g. ``("collector","mask")`` from
    ``split_trajectories``): padded steps never contribute to a real step's return, and a
    padded step itself gets ``k = 0``, reward 0, ``gamma = 1``, ``nonterminal = False``, its
    ``"next"`` leaves unchanged. Without a mask key every step is real (slice samplers zero
    their padding and mark the last real step truncated, which already stops the window).

    Differences from TorchRL's ``MultiStepTransform`` (which runs at write time): here the
    transform runs at sample time on each slice, so the n-step window is limited to the slice
    (the last ``n_steps - 1`` steps of a slice use shorter windows, with ``gamma``
    reflecting it); any present done key ends a window (TorchRL: only ``done_key``); the done
    keys are moved to step ``last`` rather than left untouched, so that they describe the
    transition actually returned; and ``nonterminal`` is ``not terminated[last]`` (TorchRL:
    ``k > 1``, a window longer than one step).
    """

    n_steps: int
    gamma: float
    _: dataclasses.KW_ONLY
    reward_keys: Any = ("reward",)
    done_keys: Any = ("done", "terminated", "truncated")
    done_key: Any = "done"
    terminated_key: Any = "terminated"
    mask_key: Optional[Any] = ("collector", "mask")
    batch_ndim: int = 2
    reward_key: Optional[Any] = None
    end_keys: Optional[Any] = None

    def __post_init__(self):
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, (int, np.integer)) or self.n_steps < 1:
            raise ValueError(f"MultiStep: n_steps must be an int >= 1, got {self.n_steps!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float, np.floating)) \
                or not math.isfinite(self.gamma) or not 0 < self.gamma <= 1:
            raise ValueError(f"MultiStep: gamma must be in (0, 1], got {self.gamma!r}")
        if not isinstance(self.batch_ndim, int) or self.batch_ndim < 1:
            raise ValueError(f"MultiStep: batch_ndim must be an int >= 1, got {self.batch_ndim!r}")
        self._keys  # validate now (and freeze the normalized keys: lists may be mutated later)

    @functools.cached_property
    def _keys(self) -> _Keys:
        """The keys as full tuples (cached in the instance dict; the fields stay as given)."""
        def many(keys, name):
            keys = [keys] if isinstance(keys, str) else list(keys)
            if not keys:
                raise ValueError(f"MultiStep: {name} must name at least one key")
            return tuple(_under_next(k) for k in keys)

        reward = many(self.reward_keys if self.reward_key is None else [self.reward_key], "reward_keys")
        done = many(self.done_keys if self.end_keys is None else self.end_keys, "done_keys")
        if len(set(reward)) != len(reward) or set(reward) & set(done):
            raise ValueError(f"MultiStep: reward keys {reward} must be distinct and not done keys {done}")
        mask = None if self.mask_key is None else _tree.as_tuple(self.mask_key)
        return _Keys(reward, done, _under_next(self.done_key), _under_next(self.terminated_key), mask)

    def __hash__(self):
        # the fields may hold lists (TorchRL users pass reward_keys=["reward"]): hash the
        # normalized keys instead (equal MultiSteps have equal normalized keys)
        return hash((type(self), self.n_steps, self.gamma, self._keys, self.batch_ndim))

    def _flag(self, batch, key, bshape, extra):
        """Flag ``key`` as bool ``[*B, T, *extra]``: shaped ``[*B, T]`` or ``[*B, T, *extra]``,
        trailing 1s allowed."""
        x = _tree.get(batch, key)
        nd = len(bshape)
        own = _strip_ones(tuple(x.shape[nd:]))
        if tuple(x.shape[:nd]) != bshape or own not in ((), extra):
            want = f"{bshape}" + ("" if not extra else f" or {bshape + extra}")
            raise ValueError(
                f"MultiStep: key {_tree.key_str(key)} has shape {x.shape}, expected {want} (trailing 1s "
                f"allowed; batch_ndim={self.batch_ndim})"
            )
        x = x.reshape(bshape + own).astype(bool)
        return jnp.broadcast_to(x.reshape(x.shape + (1,) * (len(extra) - len(own))), bshape + extra)

    def __call__(self, batch: Any) -> Any:
        keys = self._keys
        nd = self.batch_ndim
        for rk in keys.reward:
            if not _tree.has(batch, rk):
                raise KeyError(f"MultiStep: reward key {_tree.key_str(rk)} is not in the batch")
        reward0 = _tree.get(batch, keys.reward[0])
        if reward0.ndim < nd:
            raise ValueError(
                f"MultiStep: reward {_tree.key_str(keys.reward[0])} has shape {reward0.shape}, fewer than "
                f"batch_ndim={nd} batch dims ([*B, T])"
            )
        bshape = tuple(reward0.shape[:nd])
        present = [k for k in keys.done if _tree.has(batch, k)]
        if not present:
            raise KeyError(
                f"MultiStep: none of the done keys {[_tree.key_str(k) for k in keys.done]} is in the batch"
            )
        # the per-step extra dims E of the done flags (one window per element)
        extras = {_strip_ones(tuple(_tree.get(batch, k).shape[nd:])) for k in present} - {()}
        if len(extras) > 1:
            raise ValueError(
                f"MultiStep: the done keys {[_tree.key_str(k) for k in present]} have different extra dims "
                f"{sorted(extras)} after the batch dims {bshape}"
            )
        extra = extras.pop() if extras else ()
        fshape = bshape + extra
        end = jnp.zeros(fshape, bool)
        for k in present:
            end = end | self._flag(batch, k, bshape, extra)
        if keys.mask is not None and _tree.has(batch, keys.mask):
            mask = self._flag(batch, keys.mask, bshape, extra)
        else:
            mask = jnp.ones(fshape, bool)
        if _tree.has(batch, keys.terminated):
            term = self._flag(batch, keys.terminated, bshape, extra)
        elif _tree.has(batch, keys.done_key):
            term = self._flag(batch, keys.done_key, bshape, extra)
        else:
            term = end
        nxt = batch["next"]
        for path, x in _tree.leaves_with_keys(nxt):
            if tuple(x.shape[: nd + len(extra)]) != fshape:
                raise ValueError(
                    f"MultiStep: key {_tree.key_str(('next',) + path)} has shape {x.shape}; every 'next' "
                    f"leaf and reward must start with {fshape} ([*B, T] + the done flags' extra dims)"
                )

        # with extra dims E, time moves after them ([*B, *E, T, ...]) so that n_step_return and
        # the gather see time as the last flag axis; moved back at the end
        ne = len(extra)
        ax = nd - 1 + ne
        to_time_last = (lambda x: jnp.moveaxis(x, nd - 1, ax)) if ne else (lambda x: x)
        from_time_last = (lambda x: jnp.moveaxis(x, ax, nd - 1)) if ne else (lambda x: x)
        end_t, mask_t, term_t = to_time_last(end), to_time_last(mask), to_time_last(term)
        tshape = end_t.shape
        t_idx = jax.lax.broadcasted_iota(jnp.int32, tshape, ax)

        sums = {}
        for rk in keys.reward:
            ret, k = n_step_return(to_time_last(_tree.get(batch, rk)), end_t, n_steps=self.n_steps,
                                   gamma=self.gamma, mask=mask_t)
            sums[rk] = from_time_last(ret)
        last = jnp.where(mask_t, t_idx + k - 1, t_idx)

        def gather(x):
            x = to_time_last(x)
            idx = jnp.broadcast_to(_tree.expand_right(last, x), x.shape)
            return from_time_last(jnp.take_along_axis(x, idx, axis=ax))

        new_next = jax.tree_util.tree_map(gather, nxt)  # rewards too: overwritten just below
        for rk, ret in sums.items():
            new_next = _tree.set_in(new_next, rk[1:], ret)
            new_next = _tree.set_in(new_next, rk[1:-1] + ("original_" + rk[-1],), _tree.get(batch, rk))
        out = dict(batch)
        out["next"] = new_next
        out["steps_to_next_obs"] = from_time_last(k)
        out["gamma"] = jnp.power(jnp.float32(self.gamma), out["steps_to_next_obs"].astype(jnp.float32))
        out["nonterminal"] = from_time_last(mask_t & ~jnp.take_along_axis(term_t, last, axis=ax))
        return out


MultiStepTransform = MultiStep
