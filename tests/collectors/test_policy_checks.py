"""Issue 12 item 3: policy outputs that would be stored wrong raise at trace time, naming the
key and shape (reserved root keys, scalar extras, extras without the env batch as leading dims,
a carry that changes structure or shape)."""

import jax
import jax.numpy as jnp
import pytest

from rlbuf.collectors import Collector
from rlbuf.collectors._policy import RESERVED_KEYS

B = 4


def _with_extras(extras_fn):
    def policy(params, obs, key):
        return jnp.zeros(obs.shape[:-1], jnp.int32), extras_fn(obs)

    return policy


def _trace(gt_env, policy, num_envs=B, **kw):
    c = Collector(gt_env, policy, frames_per_batch=2 * (num_envs or 1), num_envs=num_envs, **kw)
    return jax.eval_shape(c.collect, c.init(jax.random.key(0)))


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_reserved_extras_raise_naming_the_key(gt_env, key):
    assert {"observation", "action", "step_count", "next", "collector", "is_init"} <= RESERVED_KEYS
    policy = _with_extras(lambda obs: {key: jnp.zeros(obs.shape[:-1], jnp.int32)})
    with pytest.raises(ValueError, match=f"policy extra '{key}' clashes"):
        _trace(gt_env, policy)


def test_scalar_extra_raises_naming_key_and_shape(gt_env):
    policy = _with_extras(lambda obs: {"log_prob": jnp.float32(0.0)})
    with pytest.raises(ValueError, match=r"policy extra \['log_prob'\] has shape \(\).*\(4,\)"):
        _trace(gt_env, policy)


def test_extra_with_wrong_leading_dim_raises(gt_env):
    policy = _with_extras(lambda obs: {"value": jnp.zeros((3,)), "nested": {"h": jnp.zeros((B, 2))}})
    with pytest.raises(ValueError, match=r"\['value'\] has shape \(3,\)"):
        _trace(gt_env, policy)
    policy = _with_extras(lambda obs: {"nested": {"h": jnp.zeros((2, B))}})
    with pytest.raises(ValueError, match=r"\['nested'\]\['h'\] has shape \(2, 4\)"):
        _trace(gt_env, policy)


def test_good_extras_pass_and_single_env_scalars_are_fine(gt_env):
    lead = lambda obs: obs.shape[:-1]  # noqa: E731
    policy = _with_extras(lambda obs: {"value": jnp.zeros(lead(obs)), "nested": {"h": jnp.zeros(lead(obs) + (2,))}})
    _, b = _trace(gt_env, policy)
    assert b["value"].shape == (B, 2) and b["nested"]["h"].shape == (B, 2, 2)
    _, b = _trace(gt_env, _with_extras(lambda obs: {"log_prob": jnp.float32(0.0)}), num_envs=None)
    assert b["log_prob"].shape == (2,)


def test_non_string_or_non_dict_extras_raise(gt_env):
    with pytest.raises(TypeError, match="keys must be strings"):
        _trace(gt_env, _with_extras(lambda obs: {("next", "x"): jnp.zeros(obs.shape[:-1])}))

    def policy(params, obs, key, carry):
        return jnp.zeros(obs.shape[:-1], jnp.int32), [1], carry

    with pytest.raises(TypeError, match="extras must be a dict"):
        _trace(gt_env, policy, policy_carry=lambda n: jnp.zeros((n,)))


def test_carry_checks(gt_env):
    def two_outputs(params, obs, key, carry):
        return jnp.zeros(obs.shape[:-1], jnp.int32), {}

    with pytest.raises(TypeError, match=r"must return \(action, extras, new_carry\)"):
        _trace(gt_env, two_outputs, policy_carry=lambda n: jnp.zeros((n,)))

    def grows(params, obs, key, carry):
        return jnp.zeros(obs.shape[:-1], jnp.int32), {}, {"h": jnp.zeros((B, 3))}

    with pytest.raises(ValueError, match=r"carry leaf \['h'\] of shape \(4, 3\).*\(4, 2\)"):
        _trace(gt_env, grows, policy_carry=lambda n: {"h": jnp.zeros((n, 2))})
    with pytest.raises(ValueError, match=r"policy_carry\(4\) leaf \['h'\] has shape \(2,\)"):
        _trace(gt_env, grows, policy_carry=lambda n: {"h": jnp.zeros((2,))})
    with pytest.raises(ValueError, match="store_carry=True needs policy_carry"):
        Collector(gt_env, two_outputs, frames_per_batch=4, num_envs=B, store_carry=True)


def test_three_tuple_without_policy_carry_names_policy_carry(gt_env):
    """Issue 26 item 8: the recurrent form without ``policy_carry`` says what to pass (the
    HostCollector shares this message)."""
    def rec(params, obs, key):
        return jnp.zeros(obs.shape[:-1], jnp.int32), {}, jnp.zeros(obs.shape[:-1])

    with pytest.raises(TypeError, match="3-tuple .*no policy_carry: pass policy_carry="):
        _trace(gt_env, rec)
