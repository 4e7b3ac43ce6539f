"""``ReplayBufferEnsemble``: several replay buffers behind one state and one jitted ``sample``.

The use case is offline-to-online RL (RLPD's symmetric sampling: half of every batch from the
offline dataset, half from the online buffer):

    ens = ReplayBufferEnsemble(offline_rb, online_rb, num_per_buffer=(128, 128))
    state = ens.init(offline_example, online_example)       # or ens.from_states(s_off, s_on)
    state = jax.jit(ens.add_to, static_argnums=1, donate_argnums=0)(state, 1, batch)
    state, batch, info = jax.jit(ens.sample)(state, key)    # 128 offline items, then 128 online

Built only on the public ``ReplayBuffer`` methods (``init``/``add``/``sample``/``can_sample``/
``update_priority``), so every sampler, writer and transform works unchanged in a member.

Semantics (TorchRL's ``ReplayBufferEnsemble`` with ``sample_from_all=True``, at fixed shapes):

- ``num_per_buffer[i]`` items are drawn from member ``i``: member ``i`` samples with
  ``batch_size=num_per_buffer[i]`` (when omitted, each member's own ``batch_size``). A member
  whose ``batch_size`` differs is rebuilt with ``batch_size=num_per_buffer[i]``, which the
  member validates (e.g. a slice sampler needs a multiple of its ``slice_len``); its state is
  the same either way, so a state filled with the original buffer can be used here.
- Batches are concatenated along their first axis in buffer order. Flat samplers give
  ``[n_i, ...]`` leaves, so the batch is ``[sum(n_i), ...]``; slice samplers give
  ``[num_slices_i, slice_len, ...]``, so the batch is ``[sum(num_slices_i), slice_len, ...]``.
  Every member must therefore produce the same keys with the same shape after the first
  axis (all flat, or all slices of one ``slice_len``): checked by ``init``/``from_states`` at
  trace time, naming the member and the key.
- ``info["buffer"]``: int32 of the batch's leading shape (``[N]`` or ``[S, L]``), the member
  each item came from. ``info["index"]``: a tuple with one entry per member, that member's own
  ``info["index"]`` (an array for ``ndim=1``, a tuple ``(*lane_idx, t)`` otherwise), so
  ``state.buffers[i].storage[k][info["index"][i]]`` is member ``i``'s part of ``batch[k]``
  before transforms. Other info keys (``"mask"``, ``"learning_mask"``, ``"weight"``, ...) are
  concatenated like the batch; a member without the key contributes ones (``mask`` True,
  ``weight`` 1: its items are real and uniformly weighted).
- ``can_sample``: every member can sample. ``update_priority(state, info["index"], priority)``
  splits ``priority`` (the batch's leading shape) by member and updates the members whose
  sampler has priorities; the others are left alone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Sequence

import jax
import jax.numpy as jnp

from rlbuf import _tree
from rlbuf.buffers.protocols import SplittableBuffer
from rlbuf.buffers.replay_buffer import BufferState
from rlbuf.samplers.base import Sampler

__all__ = ["EnsembleState", "ReplayBufferEnsemble"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EnsembleState:
    """The state of a :class:`ReplayBufferEnsemble`: ``buffers``, one ``BufferState`` per member,
    in member order (a pytree: jit, donate and checkpoint it like a buffer state)."""

    buffers: tuple

    def __len__(self) -> int:
        """Stored transitions over all members (host sync: outside ``jit`` only)."""
        return sum(len(s) for s in self.buffers)


class _VarargsConstructor(type):
    # ``ReplayBufferEnsemble(rb_1, ..., rb_k, num_per_buffer=...)`` (TorchRL's signature) onto the
    # fields of a frozen dataclass: the dataclass stays truly frozen (no __setattr__ tricks).
    # ``buffers=`` as a keyword is what ``dataclasses.replace`` passes.
    def __call__(cls, *buffers, num_per_buffer=None, **kw):
        if "buffers" in kw:
            if buffers:
                raise TypeError("ReplayBufferEnsemble: give the buffers positionally or as buffers=, not both")
            buffers = kw.pop("buffers")
        if kw:
            raise TypeError(f"ReplayBufferEnsemble: unexpected keyword arguments {sorted(kw)}")
        return super().__call__(tuple(buffers), None if num_per_buffer is None else tuple(num_per_buffer))


def _ones_like_info(x, lead: tuple):
    # ``x``: the same info entry from another member, whose dims after the batch shape are kept.
    x = jnp.asarray(x)
    return jnp.ones(lead + tuple(x.shape[len(lead):]), x.dtype)


@dataclasses.dataclass(frozen=True)
class ReplayBufferEnsemble(metaclass=_VarargsConstructor):
    """Members ``buffers`` sampled together: ``num_per_buffer[i]`` items from member ``i`` per
    ``sample``, concatenated along the first batch axis (see the module docstring).

    Args:
      *buffers: ``ReplayBuffer`` members (at least one).
      num_per_buffer: items per sample from each member; ``None``: each member's ``batch_size``.

    Frozen and hashable like ``ReplayBuffer``; every method is pure and jittable (``add_to``'s
    ``i`` is static).
    """

    buffers: tuple
    num_per_buffer: Optional[tuple]

    if TYPE_CHECKING:
        # the constructor as _VarargsConstructor implements it (type checkers do not read a
        # metaclass's __call__); at runtime the dataclass's own __init__ takes the fields
        def __init__(self, *buffers: SplittableBuffer, num_per_buffer: Optional[Sequence[int]] = None) -> None: ...

    def __post_init__(self):
        if not self.buffers:
            raise ValueError("ReplayBufferEnsemble: give at least one buffer")
        for i, rb in enumerate(self.buffers):
            if not isinstance(rb, SplittableBuffer):
                raise TypeError(f"ReplayBufferEnsemble: buffer {i} is a {type(rb).__name__}, not a buffer "
                                "(rlbuf.buffers.protocols.SplittableBuffer, e.g. a ReplayBuffer)")
        if self.num_per_buffer is not None:
            if len(self.num_per_buffer) != len(self.buffers):
                raise ValueError(
                    f"ReplayBufferEnsemble: num_per_buffer has {len(self.num_per_buffer)} entries for "
                    f"{len(self.buffers)} buffers"
                )
            for i, n in enumerate(self.num_per_buffer):
                if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                    raise ValueError(f"ReplayBufferEnsemble: num_per_buffer[{i}] must be a positive int, got {n!r}")

    @property
    def members(self) -> tuple:
        """The members as they sample here: ``buffers[i]`` with ``batch_size=num_per_buffer[i]``."""
        if self.num_per_buffer is None:
            return self.buffers
        return tuple(
            rb.with_batch_size(n)
            for rb, n in zip(self.buffers, self.num_per_buffer)
        )

    @property
    def batch_size(self) -> int:
        """Items per sample over all members (``sum(num_per_buffer)``)."""
        return sum(rb.batch_size for rb in self.members)

    # ------------------------------------------------------------------ state

    def init(self, *examples: Any) -> EnsembleState:
        """Empty members, member ``i`` shaped for ``examples[i]`` (as ``ReplayBuffer.init``)."""
        if len(examples) != len(self.buffers):
            raise ValueError(f"ReplayBufferEnsemble.init: {len(examples)} examples for {len(self.buffers)} buffers")
        return self.from_states(*(rb.init(ex) for rb, ex in zip(self.members, examples)))

    def from_states(self, *states: BufferState) -> EnsembleState:
        """An ensemble state from existing member states (e.g. an offline buffer already filled),
        after checking that the members' batches can be concatenated."""
        if len(states) != len(self.buffers):
            raise ValueError(f"ReplayBufferEnsemble: {len(states)} states for {len(self.buffers)} buffers")
        for i, (rb, s) in enumerate(zip(self.members, states)):
            if not isinstance(s, BufferState):
                raise TypeError(f"ReplayBufferEnsemble: state {i} is a {type(s).__name__}, not a BufferState")
            rb.sampler.check(s.layout, rb.batch_size)
            _check_parts(i, rb, s)
        state = EnsembleState(tuple(states))
        self._check_concat(state)
        return state

    def _check_concat(self, state: EnsembleState) -> None:
        shapes = jax.eval_shape(lambda s: [rb.sample(b, jax.random.key(0))[1] for rb, b in
                                           zip(self.members, s.buffers)], state)
        ref = dict(_tree.leaves_with_keys(shapes[0]))
        for i, out in enumerate(shapes[1:], start=1):
            got = dict(_tree.leaves_with_keys(out))
            if set(got) != set(ref):
                diff = sorted(map(_tree.key_str, set(got) ^ set(ref)))
                raise ValueError(
                    f"ReplayBufferEnsemble: buffer {i}'s batches have other keys than buffer 0's "
                    f"(differing: {', '.join(diff)}); members must sample the same keys"
                )
            for k, x in got.items():
                y = ref[k]
                if x.shape[1:] != y.shape[1:] or x.dtype != y.dtype:
                    raise ValueError(
                        f"ReplayBufferEnsemble: key {_tree.key_str(k)} is {x.dtype}{list(x.shape)} from buffer "
                        f"{i} but {y.dtype}{list(y.shape)} from buffer 0; batches are concatenated along "
                        "the first axis, so all other dims and the dtype must agree (all flat samplers, "
                        "or slice samplers of one slice_len)"
                    )

    # ------------------------------------------------------------------ methods

    def add_to(self, state: EnsembleState, i: int, data: Any) -> EnsembleState:
        """``ReplayBuffer.add`` on member ``i`` (a static Python int); the others are unchanged."""
        if not isinstance(i, int) or not 0 <= i < len(self.buffers):
            raise ValueError(f"ReplayBufferEnsemble.add_to: buffer index {i!r} not in [0, {len(self.buffers)})")
        bufs = list(state.buffers)
        bufs[i] = self.members[i].add(bufs[i], data)
        return EnsembleState(tuple(bufs))

    extend_to = add_to

    def sample(self, state: EnsembleState, key: jax.Array):
        """``(state, batch, info)``: ``num_per_buffer[i]`` items of member ``i``, in member order,
        concatenated along the first axis; ``info`` as in the module docstring."""
        members = self.members
        keys = jax.random.split(key, len(members))
        states, batches, infos = [], [], []
        for j, (rb, s) in enumerate(zip(members, state.buffers)):
            s, b, inf = rb.sample(s, keys[j])
            states.append(s)
            batches.append(b)
            infos.append(inf)
        batch = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *batches)
        leads = [tuple(_index_shape(inf["index"])) for inf in infos]
        info = {
            "buffer": jnp.concatenate([jnp.full(lead, j, jnp.int32) for j, lead in enumerate(leads)], axis=0),
            "index": tuple(inf["index"] for inf in infos),
        }
        for name in sorted({k for inf in infos for k in inf} - {"index"}):
            example = next(inf[name] for inf in infos if name in inf)
            parts = [inf[name] if name in inf else _ones_like_info(example, lead) for inf, lead in zip(infos, leads)]
            info[name] = jnp.concatenate([jnp.asarray(p) for p in parts], axis=0)
        return EnsembleState(tuple(states)), batch, info

    def can_sample(self, state: EnsembleState) -> jax.Array:
        """Bool scalar array: every member can sample a full batch of real data."""
        ok = [rb.can_sample(s) for rb, s in zip(self.members, state.buffers)]
        return jnp.all(jnp.stack(ok))

    def update_priority(self, state: EnsembleState, index: tuple, priority: jax.Array) -> EnsembleState:
        """Priorities for the items of the last ``sample``: ``index`` is its ``info["index"]``
        (one entry per member), ``priority`` has the batch's leading shape. Members without
        priorities are left alone."""
        if not isinstance(index, tuple) or len(index) != len(self.buffers):
            raise ValueError(
                f"ReplayBufferEnsemble.update_priority: index must be info['index'], a tuple of "
                f"{len(self.buffers)} per-buffer indices"
            )
        # sizes first: a short priority would otherwise fail inside a slice with XLA's words
        leads = [tuple(_index_shape(idx)) for idx in index]
        total = sum(lead[0] for lead in leads)
        shape = tuple(jnp.shape(priority))
        if not shape or shape[0] != total or any(shape[1:] != lead[1:] for lead in leads):
            per = ", ".join(f"{lead[0]} from buffer {i}" for i, lead in enumerate(leads))
            raise ValueError(
                f"ReplayBufferEnsemble.update_priority: priority has shape {list(shape)} "
                f"({shape[0] if shape else 0} rows), the batch has {total} rows ({per}; leading shape "
                f"{[total, *leads[0][1:]]}): give one priority per sampled item"
            )
        bufs, start = [], 0
        for rb, s, idx in zip(self.members, state.buffers, index):
            rows = _index_shape(idx)[0]
            p = jax.lax.slice_in_dim(priority, start, start + rows, axis=0)
            start += rows
            if type(rb.sampler).update_priority is not Sampler.update_priority:  # has priorities
                s = rb.update_priority(s, idx, p)
            bufs.append(s)
        return EnsembleState(tuple(bufs))


def _check_parts(i: int, rb: SplittableBuffer, s: BufferState) -> None:
    """Member ``i``'s state has the storage, sampler and writer state its buffer would make for
    the same layout (not, e.g., a state filled by a buffer with another sampler). A member
    buffer without those plug-ins (any ``SplittableBuffer``) is not checked part by part."""
    for part, got in (("storage", s.storage), ("sampler", s.sampler), ("writer", s.writer)):
        obj = getattr(rb, part, None)
        if obj is None:
            continue
        want = jax.eval_shape(lambda o=obj: o.init(s.layout))
        g_def, w_def = jax.tree.structure(got), jax.tree.structure(want)
        what = None
        if g_def != w_def:  # type: ignore[operator]  # jax's PyTreeDef is untyped to mypy
            what = f"its structure is {g_def}, expected {w_def}"
        else:
            for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
                if tuple(jnp.shape(g)) != tuple(w.shape) or jnp.result_type(g) != w.dtype:
                    what = (f"leaf {jax.tree_util.keystr(path)} is {jnp.result_type(g)}{list(jnp.shape(g))}, "
                            f"expected {w.dtype}{list(w.shape)}")
                    break
        if what is not None:
            raise ValueError(
                f"ReplayBufferEnsemble: state {i}'s {part} state does not match buffer {i}'s "
                f"{type(obj).__name__} ({what}): was the state made by a buffer with another {part}?"
            )


def _index_shape(idx) -> tuple:
    """The sampler's batch shape (``[n]`` or ``[num_slices, slice_len]``) from a member's
    ``info["index"]`` (an array, or a tuple of arrays of that shape)."""
    return (idx[0] if isinstance(idx, tuple) else idx).shape
