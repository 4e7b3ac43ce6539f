"""Sample-time transforms: pure functions applied to each sampled batch
(``ReplayBuffer(transform=...)``).

``MultiStep(n_steps, gamma)`` turns slices of consecutive steps into n-step transitions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf import _tree
from rlbuf.returns import _expand, n_step_return


@dataclasses.dataclass(frozen=True)
class MultiStep:
    """n-step returns over slices: a frozen, hashable, jittable ``batch -> batch`` function.

    Input: a batch whose leaves are ``[*B, T, ...]`` with ``batch_ndim = len(B) + 1`` batch
    dims, time last (``[num_slices, slice_len, ...]`` from a slice sampler; ``batch_ndim=2``
    by default). The slice of each row is treated as consecutive steps in time.

    For each step ``t`` let ``k`` (``1 <= k <= n_steps``) be the number of steps the n-step
    window spans: it grows from step ``t`` and stops *after* the first step ``j`` that

    - ends an episode: ``("next","done")`` (or ``terminated`` / ``truncated``; the keys in
      ``end_keys`` that are present are or-ed), or
    - is the row's last step ``T - 1``, or is followed by a padding step (``mask_key``), or
    - is step ``t + n_steps - 1``.

    Output (a new batch; inputs untouched), at each step ``t`` with ``last = t + k - 1``:

    - ``reward_key`` (``("next","reward")``): ``sum_{i<k} gamma**i * reward[t + i]``;
      the one-step reward is kept as ``("next","original_reward")`` (TorchRL's name).
    - every other ``"next"`` leaf (observation, done, terminated, truncated, ...): its value at
      step ``last``. So ``("next","terminated")`` is True iff the window ended on a true
      termination (no bootstrap), and a window cut by truncation or the slice end keeps
      ``terminated`` False (bootstrap from ``("next","observation")`` of step ``last``).
    - ``"steps_to_next_obs"``: int32 ``[*B, T]``, ``k`` (TorchRL's key).
    - ``"gamma"``: float32 ``[*B, T]``, ``gamma ** k``: the discount of the bootstrap value.
    - ``"nonterminal"``: bool ``[*B, T]``, ``not terminated[last]`` (``not done[last]`` when
      no ``terminated`` key is stored). The n-step target is
      ``reward + gamma * nonterminal * V(next observation)``.

    Padding (``mask_key`` present in the batch and False, e.g. ``("collector","mask")`` from
    ``split_trajectories``): padded steps never contribute to a real step's return, and a
    padded step itself gets ``k = 0``, reward 0, ``gamma = 1``, ``nonterminal = False``, its
    ``"next"`` leaves unchanged. Without a mask key every step is real (slice samplers zero
    their padding and mark the last real step truncated, which already stops the window).

    Differences from TorchRL's ``MultiStepTransform`` (which runs at write time): here the
    transform runs at sample time on each slice, so the n-step window is limited to the slice
    (the last ``n_steps - 1`` steps of a slice use shorter windows, with ``gamma``
    reflecting it); and the done keys are moved to step ``last`` rather than left untouched,
    so that they describe the transition actually returned.
    """

    n_steps: int
    gamma: float
    reward_key: Any = ("next", "reward")
    end_keys: tuple = (("next", "done"), ("next", "terminated"), ("next", "truncated"))
    terminated_key: Any = ("next", "terminated")
    done_key: Any = ("next", "done")
    mask_key: Optional[Any] = ("collector", "mask")
    batch_ndim: int = 2

    def __post_init__(self):
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, (int, np.integer)) or self.n_steps < 1:
            raise ValueError(f"MultiStep: n_steps must be an int >= 1, got {self.n_steps!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float, np.floating)) \
                or not math.isfinite(self.gamma) or not 0 < self.gamma <= 1:
            raise ValueError(f"MultiStep: gamma must be in (0, 1], got {self.gamma!r}")
        if not isinstance(self.batch_ndim, int) or self.batch_ndim < 1:
            raise ValueError(f"MultiStep: batch_ndim must be an int >= 1, got {self.batch_ndim!r}")
        object.__setattr__(self, "reward_key", _tree.as_tuple(self.reward_key))
        object.__setattr__(self, "end_keys", tuple(_tree.as_tuple(k) for k in self.end_keys))
        object.__setattr__(self, "terminated_key", _tree.as_tuple(self.terminated_key))
        object.__setattr__(self, "done_key", _tree.as_tuple(self.done_key))
        if self.mask_key is not None:
            object.__setattr__(self, "mask_key", _tree.as_tuple(self.mask_key))
        if self.reward_key[0] != "next":
            raise ValueError(f"MultiStep: reward_key must be under 'next', got {self.reward_key!r}")

    def _flag(self, batch, key, bshape):
        x = _tree.get(batch, key)
        if x.shape[: len(bshape)] != bshape or int(np.prod(x.shape[len(bshape):], dtype=np.int64)) != 1:
            raise ValueError(
                f"MultiStep: key {_tree.key_str(key)} has shape {x.shape}, expected {bshape} or "
                f"{bshape + (1,)} (batch_ndim={self.batch_ndim})"
            )
        return x.reshape(bshape).astype(bool)

    def __call__(self, batch: Any) -> Any:
        if not _tree.has(batch, self.reward_key):
            raise KeyError(f"MultiStep: reward key {_tree.key_str(self.reward_key)} is not in the batch")
        reward = _tree.get(batch, self.reward_key)
        nd = self.batch_ndim
        if reward.ndim < nd:
            raise ValueError(
                f"MultiStep: reward {_tree.key_str(self.reward_key)} has shape {reward.shape}, fewer than "
                f"batch_ndim={nd} batch dims ([*B, T])"
            )
        bshape = reward.shape[:nd]
        ax = nd - 1
        present = [k for k in self.end_keys if _tree.has(batch, k)]
        if not present:
            raise KeyError(
                f"MultiStep: none of the end keys {[_tree.key_str(k) for k in self.end_keys]} is in the batch"
            )
        end = jnp.zeros(bshape, bool)
        for k in present:
            end = end | self._flag(batch, k, bshape)
        if self.mask_key is not None and _tree.has(batch, self.mask_key):
            mask = self._flag(batch, self.mask_key, bshape)
        else:
            mask = jnp.ones(bshape, bool)
        ret, k = n_step_return(reward, end, n_steps=self.n_steps, gamma=self.gamma, mask=mask)
        t_idx = jax.lax.broadcasted_iota(jnp.int32, bshape, ax)
        last = jnp.where(mask, t_idx + k - 1, t_idx)

        def gather(x):
            idx = _expand(last, x)
            idx = jnp.broadcast_to(idx, bshape + x.shape[nd:])
            return jnp.take_along_axis(x, idx, axis=ax)

        nxt = batch["next"]
        out_next = {}
        rk = self.reward_key[1:]
        new_next = jax.tree_util.tree_map(gather, nxt)
        new_next = _tree.set_in(new_next, rk, ret)
        out_next = _tree.set_in(new_next, ("original_reward",), reward)
        out = dict(batch)
        out["next"] = out_next
        if _tree.has(batch, self.terminated_key):
            term = self._flag(batch, self.terminated_key, bshape)
        else:
            term = self._flag(batch, present[0], bshape) if not _tree.has(batch, self.done_key) \
                else self._flag(batch, self.done_key, bshape)
        term_last = jnp.take_along_axis(term, last, axis=ax)
        out["steps_to_next_obs"] = k
        out["gamma"] = jnp.power(jnp.float32(self.gamma), k.astype(jnp.float32))
        out["nonterminal"] = mask & ~term_last
        return out


MultiStepTransform = MultiStep
