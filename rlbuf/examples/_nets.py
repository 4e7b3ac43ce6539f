"""Building blocks shared by the examples: flax networks, the optax optimizer, and the
progress/plot/compilation-cache helpers of the command-line jobs.

The examples use the JAX ecosystem as a JAX user would: networks are ``flax.linen`` modules,
optimizers and schedules come from ``optax`` (both in the ``examples`` extra:
``pip install -e ".[examples]"``). Every function here is pure and jittable except the CLI
helpers at the bottom.
"""

from __future__ import annotations

import os
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


# ---------------------------------------------------------------------------- CLI helpers

#: Where the command-line jobs keep JAX's persistent compilation cache (``RLBUF_JAX_CACHE``
#: overrides it; an empty value disables the cache).
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "rlbuf", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache, so that a second run of a job loads its
    compiled programs from disk instead of compiling them again. Returns the directory (None
    when disabled with ``RLBUF_JAX_CACHE=""``). Called by the examples' ``main`` only: a
    library import never changes JAX's global configuration."""
    path = os.environ.get("RLBUF_JAX_CACHE", DEFAULT_CACHE_DIR) if path is None else path
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # The training step takes seconds to compile; tiny helper programs are not worth a file.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def progress_bar(total: int, quiet: bool, desc: str):
    """A tqdm bar counting frames (disabled with ``quiet``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", unit_scale=True, desc=desc, disable=quiet, dynamic_ncols=True)


def save_curve(path: str, curves: dict, title: str) -> str:
    """Plot ``{label: (frames, returns)}`` to the PNG ``path``; returns its absolute path.
    matplotlib is in the ``examples`` extra; without it this raises ``ImportError`` naming it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"plotting the learning curve needs matplotlib: pip install -e \".[examples]\" ({e}); "
                          "or pass --no-plot") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("frames")
    ax.set_ylabel("greedy eval return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.abspath(path)
