"""Pure-JAX building blocks shared by the examples: a tiny MLP, a GRU cell, Adam, and the
progress/plot helpers of the command-line jobs.

Deliberately dependency-free (no flax/optax): parameters are plain dicts/lists of arrays,
every function is pure and jittable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------- layers


def dense_init(key: jax.Array, fan_in: int, fan_out: int, scale: float = 1.0) -> dict:
    """``{"w": [fan_in, fan_out], "b": [fan_out]}``, uniform in ``±scale/sqrt(fan_in)`` (PyTorch's
    default ``Linear`` init, which trains well for these small value networks)."""
    bound = scale / math.sqrt(fan_in)
    kw, kb = jax.random.split(key)
    return {
        "w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
        "b": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
    }


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> list:
    """Parameters of an MLP with layer widths ``sizes = (in, hidden..., out)``."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_apply(params: list, x: jax.Array) -> jax.Array:
    """``x``: ``[..., in]`` -> ``[..., out]``; ReLU between layers, linear output."""
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def gru_init(key: jax.Array, in_dim: int, hidden: int) -> dict:
    """GRU cell parameters: input weights ``[in, 3H]``, recurrent weights ``[H, 3H]`` (gates in
    the order reset, update, candidate) and biases ``[3H]`` for both."""
    k1, k2 = jax.random.split(key)
    x = dense_init(k1, in_dim, 3 * hidden, scale=math.sqrt(in_dim / hidden))
    h = dense_init(k2, hidden, 3 * hidden)
    return {"wx": x["w"], "bx": x["b"], "wh": h["w"], "bh": h["b"]}


def gru_cell(params: dict, h: jax.Array, x: jax.Array) -> jax.Array:
    """One GRU step (PyTorch's formulation): ``h``: ``[..., H]``, ``x``: ``[..., in]`` -> ``[..., H]``."""
    gx = x @ params["wx"] + params["bx"]
    gh = h @ params["wh"] + params["bh"]
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


# ---------------------------------------------------------------------------- optimizer


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdamState:
    """First/second moment estimates (pytrees like the params) and the int32 step count."""

    mu: Any
    nu: Any
    count: jax.Array


def adam_init(params: Any) -> AdamState:
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    return AdamState(mu=zeros(), nu=zeros(), count=jnp.zeros((), jnp.int32))


def clip_by_global_norm(grads: Any, max_norm: float) -> tuple[Any, jax.Array]:
    """Scale ``grads`` so that their global L2 norm is at most ``max_norm``; also returns the norm."""
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * scale, grads), norm


def adam_update(grads: Any, state: AdamState, params: Any, lr, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8) -> tuple[Any, AdamState]:
    """One Adam step with bias correction; ``lr`` may be a traced scalar (schedules)."""
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
    t = count.astype(jnp.float32)
    c1 = 1 - b1**t
    c2 = 1 - b2**t
    params = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, mu, nu)
    return params, AdamState(mu=mu, nu=nu, count=count)


def linear_schedule(start: float, end: float, steps: float, t) -> jax.Array:
    """``start`` at ``t = 0`` moving linearly to ``end`` at ``t = steps``, constant after."""
    frac = jnp.clip(jnp.asarray(t, jnp.float32) / max(float(steps), 1.0), 0.0, 1.0)
    return start + frac * (end - start)


# ---------------------------------------------------------------------------- CLI helpers


def progress_bar(total: int, quiet: bool, desc: str):
    """A tqdm bar counting frames (disabled with ``quiet``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", unit_scale=True, desc=desc, disable=quiet, dynamic_ncols=True)


def save_curve(path: str, curves: dict, title: str, quiet: bool = False) -> bool:
    """Plot ``{label: (frames, returns)}`` to a PNG; returns False when matplotlib is missing
    (an optional dependency: ``pip install rlbuf[plots]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not quiet:
            print("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return False
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
    return True


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
