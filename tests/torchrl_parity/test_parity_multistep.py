"""MultiStep against TorchRL's ``MultiStep`` postproc and ``MultiStepTransform`` on the same
[B, T] batches: n-step rewards, kept one-step rewards, next observations, steps_to_next_obs
and gamma; custom reward/done keys; done flags with an extra per-step dim (test_unusual_done).
Not compared (deliberate differences, see MultiStep's docstring): the done keys (moved to the
window's last step here, left untouched by TorchRL) and "nonterminal"."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torchrl")

from td_convert import assert_same, from_td, to_td  # noqa: E402
from torchrl.data.postprocs import MultiStep as TorchRLMultiStep  # noqa: E402
from torchrl.envs.transforms import MultiStepTransform as TorchRLMultiStepTransform  # noqa: E402

from rlbuf.buffers.transforms import MultiStep  # noqa: E402

COMPARED = [("next", "reward"), ("next", "original_reward"), ("next", "observation"), ("steps_to_next_obs",),
            ("gamma",)]


def batch(rng, shape, extra=(), p_done=0.2):
    """[*shape] batch; ``extra`` per-step dims on done, reward and observations (agents)."""
    s = tuple(shape) + tuple(extra)
    return {
        "observation": rng.normal(size=s + (2,)).astype(np.float32),
        "next": {"observation": rng.normal(size=s + (2,)).astype(np.float32),
                 "done": rng.random(s) < p_done,
                 "reward": rng.normal(size=s).astype(np.float32)},
    }


_jitted = {}


def ours(b, n, gamma, **kw):
    key = (n, gamma, tuple(sorted(kw.items())))
    if key not in _jitted:  # one compilation per configuration and shape
        _jitted[key] = jax.jit(MultiStep(n, gamma, **kw))
    out = _jitted[key](jax.tree_util.tree_map(jnp.asarray, b))
    return jax.tree_util.tree_map(np.asarray, out)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 2, 4]), shape=st.sampled_from([(2, 9), (3, 5)]),
       p=st.sampled_from([0.0, 0.2, 0.6]))
def test_postproc_on_whole_rows(seed, n, shape, p):
    b = batch(np.random.default_rng(seed), shape, p_done=p)
    theirs = from_td(TorchRLMultiStep(0.9, n)(to_td(b, 2)))
    assert_same(ours(b, n, 0.9), theirs, keys=COMPARED, rtol=1e-5, atol=1e-6)


def test_unusual_done():
    """TorchRL's test_unusual_done: done [B, T, A] (one flag per agent), reward [B, T, A]."""
    b = batch(np.random.default_rng(0), (4, 3, 10), extra=(5,))
    b["next"]["done"][..., 5, :] = True
    b["next"]["done"][..., 2, 4, :] = False  # agents differ
    theirs = from_td(TorchRLMultiStep(0.98, 3)(to_td(b, 3)))
    out = ours(b, 3, 0.98, batch_ndim=3)
    assert out["steps_to_next_obs"].shape == (4, 3, 10, 5)
    assert_same(out, theirs, keys=COMPARED, rtol=1e-5, atol=1e-6)


def test_transform_with_custom_reward_and_done_keys():
    """TorchRL's rb transform (write time, last n_steps held back) with reward_keys/done_keys
    naming nested keys; steps whose window is not cut by the row end agree."""
    n, T = 3, 12
    rng = np.random.default_rng(1)
    b = {"observation": rng.normal(size=(2, T, 2)).astype(np.float32),
         "next": {"observation": rng.normal(size=(2, T, 2)).astype(np.float32),
                  "end": rng.random((2, T)) < 0.2,
                  "agents": {"r": rng.normal(size=(2, T)).astype(np.float32)}}}
    flags = [("next", "end"), ("next", "agents", "r"), ("next", "original_reward")]
    t = TorchRLMultiStepTransform(n, 0.9, reward_keys=[("agents", "r")], done_key="end", done_keys=["end"])
    theirs = from_td(t.inv(to_td(b, 2, trailing_one=flags)), trailing_one=flags)
    out = ours(b, n, 0.9, reward_keys=(("agents", "r"),), done_keys=("end",))
    out = jax.tree_util.tree_map(lambda x: x[:, : T - n], out)
    assert_same(out, theirs, keys=[("next", "agents", "r"), ("next", "observation"), ("steps_to_next_obs",),
                                   ("gamma",)], rtol=1e-5, atol=1e-6)
    # TorchRL keeps the original at ("next", "original_reward"); rlbuf next to the reward
    np.testing.assert_array_equal(out["next"]["agents"]["original_r"], theirs["next"]["original_reward"])
