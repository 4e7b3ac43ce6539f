"""Building blocks shared by the examples: flax networks, the optax optimizer and the greedy
evaluation (the command-line helpers -- progress bar, plot, compilation cache -- are in
``rlbuf.examples._cli``).

The examples use the JAX ecosystem as a JAX user would: networks are ``flax.linen`` modules,
optimizers and schedules come from ``optax`` (both in the ``examples`` extra:
``pip install -e ".[examples]"``). Every function here is pure and jittable.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# ---------------------------------------------------------------------------- networks


def torch_uniform(fan_in: int):
    """PyTorch's default ``Linear`` init, uniform in ``±1/sqrt(fan_in)`` for weights and biases
    (these small value networks train well with it; flax's default zero bias does too, but the
    examples' hyper-parameters were tuned with this one)."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLP(nn.Module):
    """``x [..., in] -> [..., features[-1]]``: Dense layers with ReLU between them, linear output."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            init = torch_uniform(x.shape[-1])
            x = nn.Dense(f, kernel_init=init, bias_init=init)(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


def adam(lr: float, lr_end: float, decay_steps: int, max_grad_norm: float) -> optax.GradientTransformation:
    """Adam whose learning rate decays linearly from ``lr`` to ``lr_end`` over ``decay_steps``
    updates (then stays), after clipping the gradients' global norm to ``max_grad_norm``."""
    schedule = optax.linear_schedule(lr, lr_end, max(1, int(decay_steps)))
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(schedule))


def huber(td: jax.Array) -> jax.Array:
    """Elementwise Huber loss (delta 1) of TD errors: ``optax.huber_loss`` against zero."""
    return optax.huber_loss(td, jnp.zeros_like(td), delta=1.0)


# ---------------------------------------------------------------------------- evaluation


def greedy_returns(env, env_params, act, carry0, key: jax.Array, n_episodes: int, max_steps: int) -> jax.Array:
    """Undiscounted returns ``[n_episodes]`` of ``n_episodes`` vmapped episodes run for at most
    ``max_steps`` steps straight on a gymnax env (``reset_env``/``step_env``: no auto-reset;
    the time limit is the scan length).

    ``act(carry, obs) -> (action, carry)`` acts on the batch ``obs [n_episodes, ...]``; ``carry0``
    (e.g. a recurrent state ``[n_episodes, H]``, or ``()``) is its initial memory. An episode's
    reward stops counting at its first terminal step.
    """
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(k_reset, n_episodes), env_params)

    def body(c, k):
        obs, state, carry, ret, alive = c
        action, carry = act(carry, obs)
        obs, state, reward, term, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
            jax.random.split(k, n_episodes), state, action, env_params
        )
        ret = ret + reward * alive
        return (obs, state, carry, ret, alive & ~term), None

    c0 = (obs, state, carry0, jnp.zeros((n_episodes,), jnp.float32), jnp.ones((n_episodes,), bool))
    (_, _, _, ret, _), _ = jax.lax.scan(body, c0, jax.random.split(k_steps, max_steps))
    return ret
