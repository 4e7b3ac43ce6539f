"""rlbuf nested-dict batches <-> TorchRL TensorDicts, for the differential tests.

rlbuf's done flags and rewards are batch-shaped (``[*B, T]``); TorchRL's carry a trailing
singleton (``[*B, T, 1]``). ``to_td`` adds it to the keys named in ``trailing_one`` and
``from_td`` removes it again, so both sides see the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict

# TorchRL's done and reward entries with their trailing 1
NEXT_FLAGS = (("next", "done"), ("next", "terminated"), ("next", "truncated"), ("next", "reward"),
              ("next", "original_reward"))


def _items(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _items(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def to_td(batch: dict, batch_ndim: int, trailing_one=NEXT_FLAGS) -> TensorDict:
    """A TensorDict of batch size ``leaf.shape[:batch_ndim]`` holding copies of every leaf."""
    td = None
    for key, v in _items(batch):
        a = np.array(v)  # a writable copy: torch must not alias rlbuf's arrays
        if td is None:
            td = TensorDict({}, batch_size=a.shape[:batch_ndim])
        t = torch.from_numpy(a)
        if key in trailing_one and a.ndim == batch_ndim:
            t = t.unsqueeze(-1)
        td.set(key, t)
    return td


def from_td(td: TensorDict, trailing_one=NEXT_FLAGS) -> dict:
    """A nested dict of numpy arrays; the trailing 1 of ``trailing_one`` keys removed."""
    out: dict = {}
    for key in td.keys(include_nested=True, leaves_only=True):
        key = (key,) if isinstance(key, str) else tuple(key)
        a = td.get(key).detach().cpu().numpy()
        if key in trailing_one and a.ndim == td.batch_dims + 1 and a.shape[-1] == 1:
            a = a[..., 0]
        node = out
        for k in key[:-1]:
            node = node.setdefault(k, {})
        node[key[-1]] = a
    return out


def flat(tree: dict) -> dict:
    """``{key_tuple: np.ndarray}`` of a nested dict (rlbuf batch or ``from_td`` result)."""
    return {k: np.asarray(v) for k, v in _items(tree)}


def assert_same(ours: dict, theirs: dict, *, keys=None, rtol=0.0, atol=0.0):
    """Same keys (or the given subset) and the same values, with a message naming the key."""
    a, b = flat(ours), flat(theirs)
    if keys is None:
        assert set(a) == set(b), f"keys differ: only rlbuf {set(a) - set(b)}, only TorchRL {set(b) - set(a)}"
        keys = sorted(a)
    for k in keys:
        assert a[k].shape == b[k].shape, f"{k}: shape {a[k].shape} (rlbuf) vs {b[k].shape} (TorchRL)"
        if rtol or atol:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=str(k))
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
