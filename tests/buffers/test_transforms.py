"""MultiStep against a plain-loop numpy n-step reference across terminated, truncated, slice
ends and padding; as a ReplayBuffer transform on a slice sampler; errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf.buffers.transforms import MultiStep, MultiStepTransform

S, T = 3, 7


def reference(batch, n, gamma, use_mask):
    """Loop over every step: walk forward until an episode end, the slice end, padding, or n."""
    r = batch["next"]["reward"]
    term = batch["next"]["terminated"]
    trunc = batch["next"]["truncated"]
    done = term | trunc
    mask = batch["collector"]["mask"] if use_mask else np.ones((S, T), bool)
    out = {k: np.zeros((S, T), d) for k, d in
           [("ret", np.float64), ("k", np.int64), ("gamma", np.float64), ("nonterm", bool), ("last", np.int64)]}
    for s in range(S):
        for t in range(T):
            if not mask[s, t]:
                out["last"][s, t] = t
                out["gamma"][s, t] = 1.0
                continue
            j, ret, k = t, 0.0, 0
            while True:
                ret += gamma ** k * r[s, j]
                k += 1
                stop = done[s, j] or j == T - 1 or not mask[s, j + 1] or k == n
                if stop:
                    break
                j += 1
            out["ret"][s, t], out["k"][s, t], out["last"][s, t] = ret, k, j
            out["gamma"][s, t] = gamma ** k
            out["nonterm"][s, t] = not term[s, j]
    return out


def make_batch(rng, use_mask):
    term = rng.random((S, T)) < 0.15
    trunc = (rng.random((S, T)) < 0.15) & ~term
    b = {
        "observation": rng.normal(size=(S, T, 2)).astype(np.float32),
        "next": {
            "observation": rng.normal(size=(S, T, 2)).astype(np.float32),
            "reward": rng.normal(size=(S, T)).astype(np.float32),
            "terminated": term, "truncated": trunc, "done": term | trunc,
        },
    }
    if use_mask:
        lengths = rng.integers(1, T + 1, S)
        b["collector"] = {"mask": np.arange(T)[None, :] < lengths[:, None]}
    return b


@functools.lru_cache(maxsize=None)
def jitted(n, gamma):
    return jax.jit(MultiStep(n, gamma))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), n=st.sampled_from([1, 3, 5]), use_mask=st.booleans())
def test_against_numpy_reference(seed, n, use_mask):
    gamma = 0.9
    batch = make_batch(np.random.default_rng(seed), use_mask)
    out = jitted(n, gamma)(jax.tree_util.tree_map(jnp.asarray, batch))
    ref = reference(batch, n, gamma, use_mask)
    np.testing.assert_allclose(np.asarray(out["next"]["reward"]), ref["ret"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["steps_to_next_obs"]), ref["k"])
    np.testing.assert_allclose(np.asarray(out["gamma"]), ref["gamma"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["nonterminal"]), ref["nonterm"])
    np.testing.assert_array_equal(np.asarray(out["next"]["original_reward"]), batch["next"]["reward"])
    last = ref["last"]
    rows = np.arange(S)[:, None]
    for key in ("observation", "terminated", "truncated", "done"):
        np.testing.assert_array_equal(np.asarray(out["next"][key]), batch["next"][key][rows, last])
    np.testing.assert_array_equal(np.asarray(out["observation"]), batch["observation"])
    if n == 1 and not use_mask:
        np.testing.assert_array_equal(np.asarray(out["next"]["reward"]), batch["next"]["reward"])


def test_terminated_vs_truncated_by_hand():
    f = MultiStep(3, 0.5)
    r = jnp.array([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]])
    term = jnp.array([[False, True, False, False, False, False]])
    trunc = jnp.array([[False, False, False, True, False, False]])
    obs = jnp.arange(6.0)[None, :, None]
    out = jax.jit(f)({"next": {"reward": r, "terminated": term, "truncated": trunc, "done": term | trunc,
                      "observation": obs}})
    # t=0: 1 + .5*2 then terminated -> k=2, no bootstrap. t=2: 4 + .5*8 then truncated -> k=2,
    # bootstrap from next obs of step 3. t=4: 16 + .5*32, slice end -> k=2, bootstrap.
    np.testing.assert_allclose(out["next"]["reward"][0], [2.0, 2.0, 8.0, 8.0, 32.0, 32.0])
    np.testing.assert_array_equal(out["steps_to_next_obs"][0], [2, 1, 2, 1, 2, 1])
    np.testing.assert_array_equal(out["nonterminal"][0], [False, False, True, True, True, True])
    np.testing.assert_array_equal(out["next"]["observation"][0, :, 0], [1, 1, 3, 3, 5, 5])
    np.testing.assert_array_equal(out["next"]["truncated"][0], [False, False, True, True, False, False])
    np.testing.assert_allclose(out["gamma"][0], [0.25, 0.5, 0.25, 0.5, 0.25, 0.5])


def test_with_slice_sampler_in_a_replay_buffer():
    from rlbuf.buffers.replay_buffer import ReplayBuffer
    from rlbuf.samplers.slice import SliceSampler
    from rlbuf.storages import LazyTensorStorage

    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=12,
                      sampler=SliceSampler(slice_len=4, end_key=("next", "done")),
                      transform=MultiStepTransform(2, 0.5))
    t = 32
    done = jnp.arange(t) % 8 == 7
    data = {"next": {"reward": jnp.ones(t), "done": done, "terminated": done, "truncated": jnp.zeros(t, bool),
                     "observation": jnp.arange(t, dtype=jnp.float32)}}
    s = jax.jit(rb.add)(rb.init(data), data)
    _, batch, info = jax.jit(rb.sample)(s, jax.random.key(0))
    assert batch["next"]["reward"].shape == (3, 4)
    # The slice's last step was marked truncated by the sampler: the window stops there.
    np.testing.assert_array_equal(np.asarray(batch["steps_to_next_obs"])[:, -1], 1)
    k = np.asarray(batch["steps_to_next_obs"])
    np.testing.assert_allclose(np.asarray(batch["next"]["reward"]), np.where(k == 2, 1.5, 1.0))


def test_errors():
    with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
        MultiStep(0, 0.9)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\]"):
        MultiStep(3, 1.5)
    f = MultiStep(3, 0.9)
    with pytest.raises(KeyError, match="reward key"):
        f({"next": {"done": jnp.zeros((2, 3), bool)}})
    with pytest.raises(KeyError, match="none of the done keys"):
        f({"next": {"reward": jnp.zeros((2, 3))}})
    # done flags with an extra per-step dim: the reward must carry it too
    with pytest.raises(ValueError, match=r"key \('next', 'reward'\) has shape \(2, 3\); every 'next' leaf"):
        f({"next": {"reward": jnp.zeros((2, 3)), "done": jnp.zeros((2, 3, 2), bool)}})
    with pytest.raises(ValueError, match=r"have different extra dims"):
        f({"next": {"reward": jnp.zeros((2, 3, 2)), "done": jnp.zeros((2, 3, 2), bool),
                    "truncated": jnp.zeros((2, 3, 4), bool)}})
    with pytest.raises(ValueError, match=r"key \('collector', 'mask'\) has shape \(2, 4\)"):
        f({"next": {"reward": jnp.zeros((2, 3)), "done": jnp.zeros((2, 3), bool)},
           "collector": {"mask": jnp.zeros((2, 4), bool)}})
    with pytest.raises(ValueError, match="must be distinct and not done keys"):
        MultiStep(3, 0.9, reward_keys=["reward", ("next", "reward")])
    with pytest.raises(ValueError, match="done_keys must name at least one key"):
        MultiStep(3, 0.9, done_keys=[])


def test_keys_as_torchrl_names_them():
    """reward_keys/done_keys relative to "next", lists accepted (hashable, one jit entry per
    configuration); every reward summed, each original kept as "original_<name>"; the
    first-release names reward_key/end_keys still work."""
    rng = np.random.default_rng(0)
    b = make_batch(rng, False)
    b["next"]["cost"] = rng.normal(size=(S, T)).astype(np.float32)
    b["next"]["agent"] = {"reward": b["next"]["reward"] * 2}
    f = MultiStep(3, 0.9, reward_keys=["reward", "cost", ("next", "agent", "reward")],
                  done_keys=["terminated", ("next", "truncated")])
    assert hash(f) == hash(MultiStep(3, 0.9, reward_keys=("reward", "cost", ("agent", "reward")),
                                     done_keys=("terminated", "truncated")))
    out = jax.jit(f)(jax.tree_util.tree_map(jnp.asarray, b))
    ref = reference(b, 3, 0.9, False)
    np.testing.assert_allclose(out["next"]["reward"], ref["ret"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["next"]["agent"]["reward"], 2 * ref["ret"], rtol=1e-5, atol=1e-6)
    cost_only = dict(b, next={**b["next"], "reward": b["next"]["cost"]})
    np.testing.assert_allclose(out["next"]["cost"], reference(cost_only, 3, 0.9, False)["ret"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["next"]["original_cost"], b["next"]["cost"])
    np.testing.assert_array_equal(out["next"]["agent"]["original_reward"], b["next"]["agent"]["reward"])
    old = MultiStep(3, 0.9, reward_key=("next", "cost"), end_keys=[("next", "done")])
    np.testing.assert_allclose(old(b)["next"]["cost"], out["next"]["cost"], rtol=1e-6)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), use_mask=st.booleans(), trailing_one=st.booleans())
def test_done_with_extra_per_step_dims(seed, use_mask, trailing_one):
    """Done flags [S, T, A] (one per agent, TorchRL's test_unusual_done): each agent's window is
    that of the [S*A, T] batch of its own flags; flags [S, T] (the mask) are shared by agents."""
    A = 3
    rng = np.random.default_rng(seed)
    per_agent = [make_batch(rng, use_mask) for _ in range(A)]
    if use_mask:
        for p in per_agent[1:]:
            p["collector"] = per_agent[0]["collector"]
    stack = lambda *xs: np.stack(xs, axis=2)  # noqa: E731  [S, T, A, ...]
    b = jax.tree_util.tree_map(stack, *[{"next": p["next"]} for p in per_agent])
    if trailing_one:
        for k in ("terminated", "truncated", "done"):
            b["next"][k] = b["next"][k][..., None]
    if use_mask:
        b["collector"] = per_agent[0]["collector"]
    out = jax.jit(MultiStep(3, 0.9))(jax.tree_util.tree_map(jnp.asarray, b))
    assert out["steps_to_next_obs"].shape == (S, T, A)
    for a, p in enumerate(per_agent):
        ref = reference(p, 3, 0.9, use_mask)
        np.testing.assert_allclose(out["next"]["reward"][:, :, a], ref["ret"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["steps_to_next_obs"][:, :, a], ref["k"])
        np.testing.assert_array_equal(out["nonterminal"][:, :, a], ref["nonterm"])
        rows = np.arange(S)[:, None]
        np.testing.assert_array_equal(out["next"]["observation"][:, :, a], p["next"]["observation"][rows, ref["last"]])
        np.testing.assert_array_equal(out["next"]["done"][:, :, a].reshape(S, T), p["next"]["done"][rows, ref["last"]])
