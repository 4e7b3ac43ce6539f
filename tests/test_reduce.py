"""rlbuf._reduce against numpy (lower median) and, when installed, TorchRL's own ``_reduce``."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlbuf._reduce import REDUCTIONS, check, reduce_trailing


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 4), (2, 3, 2, 3)])
def test_matches_numpy_and_torchrl(reduction, shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    lead = 1 if len(shape) < 3 else 2
    got = np.asarray(reduce_trailing(jnp.asarray(x), lead, reduction))
    flat = x.reshape(x.shape[:lead] + (-1,))
    if reduction == "median":
        want = np.sort(flat, -1)[..., (flat.shape[-1] - 1) // 2]
    else:
        want = getattr(np, reduction)(flat, -1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    try:
        import torch
        from torchrl.data.replay_buffers.utils import _reduce
    except ImportError:  # the TorchRL comparison runs where it is installed (CI installs it)
        return
    np.testing.assert_allclose(got, _reduce(torch.from_numpy(flat), reduction, dim=-1).numpy(), rtol=1e-6)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        check("prod", "X")
