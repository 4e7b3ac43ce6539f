"""Return and advantage estimators over rlbuf batches: time is the LAST batch axis.

Every function takes arrays shaped ``[T]`` (one env), ``[B, T]`` (a collector batch of ``B``
envs) or ``[W, B, T]`` (workers x envs) — any ``[*B, T]`` — and returns arrays of the same
shape. They are pure and jittable, and ``vmap`` over any leading axis. Names and semantics
follow TorchRL's ``torchrl.objectives.value.functional`` (``generalized_advantage_estimate``,
``td_lambda_return_estimate``, ``vtrace_advantage_estimate``, ``reward2go``), with rlbuf's
layout: no trailing feature dim of 1 and time last instead of TorchRL's ``time_dim=-2``.

Inputs, all ``[*B, T]``, read straight from a collector batch:

- ``reward``: ``batch["next"]["reward"]``, the reward of step ``t``.
- ``value``: ``V(observation[t])``; ``next_value``: ``V(("next","observation")[t])``, the value
  of the TRUE next observation (at a done step, the episode's final observation, never the
  reset one), so a truncated episode can be bootstrapped.
- ``terminated`` (bool): the episode ended in a terminal state at step ``t``: its future
  return is 0, ``next_value[t]`` is never used.
- ``done`` (bool): ``terminated | truncated``: the trajectory ends at step ``t``. Nothing flows
  from step ``t + 1`` into step ``t`` across a done step (``t + 1`` belongs to another
  episode); at a truncated step (done, not terminated) the estimators bootstrap from
  ``next_value[t]``. ``done | terminated`` is used, so a ``done`` that misses a termination is
  still cut there.
- ``mask`` (optional bool, True at real steps): padding from ``split_trajectories`` or
  ``strict_length=False`` slices. A real step followed by a padded step is handled like a
  truncation (bootstrap from its ``next_value``); padded inputs never reach a real output
  (they may hold anything, NaN included) and padded outputs are 0.
- The last step of the batch (``t = T - 1``) bootstraps from ``next_value[T - 1]`` unless
  terminated: a trajectory that continues into the next batch is cut like a truncation.

``gamma``, ``lmbda`` and the clips are Python numbers or arrays of shape ``()`` or ``[*B, T]``
(per-step values, e.g. the ``"gamma"`` of ``MultiStep``). Float inputs of less than 32 bits
are computed in float32. Gradients flow through every input: wrap ``value``/``next_value``
in ``jax.lax.stop_gradient`` when the result is used as a regression target inside a loss.

All estimators are one reverse linear recurrence ``y[t] = a[t] + (0 if cut[t] else b[t] * y[t + 1])``
(``_reverse_scan``: a loop over the time axis, in place). The cut is a select, never a
multiplication by zero, so a NaN/inf from another episode (or an unused ``next_value`` at a
terminated step) never reaches an output: ``0 * nan`` is ``nan``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["gae", "td_lambda", "vtrace", "discounted_sum", "n_step_return"]


# ---------------------------------------------------------------------------- validation


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _float_input(fn: str, name: str, x, shape: Optional[tuple]):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must be a float array, got dtype {x.dtype}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {_shape_str(x.shape)}, expected {_shape_str(shape)} "
                         f"(the shape of reward: [*B, T], time last)")
    return x


def _flag_input(fn: str, name: str, x, shape: tuple):
    x = jnp.asarray(x)
    if not (x.dtype == jnp.bool_ or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{fn}: {name} must be a bool (or 0/1 integer) array, got dtype {x.dtype}")
    if x.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {_shape_str(x.shape)}, expected {_shape_str(shape)} "
                         f"(the shape of reward: [*B, T], time last)")
    return x.astype(bool)


def _coef(fn: str, name: str, v, shape: tuple, dtype, lo: float, hi: float):
    """A scalar or ``[*B, T]`` coefficient (broadcast by the arithmetic); Python numbers range-checked."""
    if isinstance(v, (Real, np.number)) and not isinstance(v, bool):
        fv = float(v)  # a Python/numpy real scalar: compare it as a float
        if not (math.isfinite(fv) or (math.isinf(fv) and fv > 0 and hi == math.inf)) or not lo <= fv <= hi:
            raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}], got {v!r}")
    elif isinstance(v, bool):
        raise TypeError(f"{fn}: {name} must be a number or a float array, got {v!r}")
    v = jnp.asarray(v)
    if v.shape not in ((), shape):
        raise ValueError(f"{fn}: {name} has shape {_shape_str(v.shape)}, expected a scalar or "
                         f"{_shape_str(shape)} (the shape of reward)")
    return v.astype(dtype)


def _compute_dtype(*xs):
    return jnp.result_type(*xs, jnp.float32)


# ---------------------------------------------------------------------------- time helpers


def _shift(x, i: int, axis: int = -1, fill=0):
    """``x`` moved ``i`` steps earlier along ``axis`` (``out[t] = x[t + i]``), ``fill`` past the end."""
    if i == 0:
        return x
    axis = axis % x.ndim
    n = x.shape[axis]
    body = jax.lax.slice_in_dim(x, min(i, n), n, axis=axis)
    pad_shape = list(x.shape)
    pad_shape[axis] = min(i, n)
    return jnp.concatenate([body, jnp.full(pad_shape, fill, x.dtype)], axis=axis)


def _expand(m, x):
    """Broadcast a ``[*B, T]`` array against ``x`` ``[*B, T, ...]``."""
    return m.reshape(m.shape + (1,) * (x.ndim - m.ndim))


def _reverse_scan(fn, xs: dict, init):
    """The one recurrence of this module, over the last axis of ``[*B, T]`` arrays:

        y[..., t] = a[..., t] + (0 if cut[..., t] else b[..., t] * y[..., t + 1]),   y[..., T] = init,
        (a[..., t], b[..., t], cut[..., t]) = fn({k: xs[k][..., t]})

    Returns ``y`` ``[*B, T]``. The loop steps over time in place, on the time-last arrays: each
    step reads column ``t`` of every input and writes column ``t`` of ``y`` (a buffer carried
    through the loop). No input is moved to time-major first nor the output back: on XLA:CPU
    each such transpose is a kernel of its own and cost more than the loop itself. ``fn`` runs
    inside the loop body, so the per-step arithmetic reads the inputs once instead of going
    through separate whole-array passes first.
    """
    T = next(iter(xs.values())).shape[-1]

    def step(i, c):
        y, ys = c
        t = T - 1 - i
        # t is in [0, T): no negative-index wrap (an extra kernel per step on XLA:CPU)
        col = lambda x: jax.lax.dynamic_index_in_dim(x, t, x.ndim - 1, False, allow_negative_indices=False)  # noqa: E731
        a, b, cut = fn({k: col(x) for k, x in xs.items()})
        # a select, not b = 0: 0 * NaN is NaN, and nothing may flow across a cut
        y = a + jnp.where(cut, 0, b * y)
        return y, jax.lax.dynamic_update_index_in_dim(ys, y, t, ys.ndim - 1, allow_negative_indices=False)

    ys0 = jnp.zeros(init.shape + (T,), init.dtype)
    return jax.lax.fori_loop(0, T, step, (init, ys0))[1]


def _linear(a, b, cut, init):
    """``_reverse_scan`` of precomputed ``a``, ``cut`` ``[*B, T]`` and ``b`` (``[*B, T]`` or a
    scalar, then closed over: never broadcast to a whole array)."""
    xs = {"a": a, "cut": cut, **({"b": b} if jnp.ndim(b) else {})}
    return _reverse_scan(lambda x: (x["a"], x.get("b", b), x["cut"]), xs, init)


def _zeros_like_row(x):
    return jnp.zeros(x.shape[:-1], x.dtype)


def _cuts(fn, shape, terminated, done, mask):
    """``(real, cut)``: ``real`` marks real steps (None: all, no mask given); ``cut[t]`` is True
    where step ``t + 1`` must not flow into step ``t``: done, terminated, the batch's last step,
    padding at ``t`` or ``t + 1``."""
    if mask is None:  # no masking ops at all: fewer XLA kernels on the common path
        last = jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) == shape[-1] - 1
        return None, done | terminated | last
    real = _flag_input(fn, "mask", mask, shape)
    return real, done | terminated | ~real | ~_shift(real, 1, fill=False)


def _keep(real, x):
    """``x`` at real steps, 0 at padded ones (``real=None``: no padding)."""
    return x if real is None else jnp.where(real, x, 0)


def _prepare(fn, reward, floats: dict, terminated, done, mask):
    reward = _float_input(fn, "reward", reward, None)
    if reward.ndim < 1:
        raise ValueError(f"{fn}: reward must have a time axis ([T], [B, T], [W, B, T]), got a scalar")
    shape = reward.shape
    floats = {k: _float_input(fn, k, v, shape) for k, v in floats.items()}
    terminated = _flag_input(fn, "terminated", terminated, shape)
    done = _flag_input(fn, "done", done, shape)
    real, cut = _cuts(fn, shape, terminated, done, mask)
    dtype = _compute_dtype(reward, *floats.values())
    # where, not multiply: padded or post-terminal inputs (possibly NaN) never reach a real output
    clean = lambda x: _keep(real, x.astype(dtype))  # noqa: E731
    floats = {k: clean(v) for k, v in floats.items()}
    floats["done"] = done
    return shape, dtype, clean(reward), floats, terminated, real, cut


# ---------------------------------------------------------------------------- estimators


def gae(reward, value, next_value, terminated, done, *, gamma, lmbda, mask=None):
    """Generalized advantage estimation (Schulman et al. 2016), TorchRL's
    ``generalized_advantage_estimate`` with time last.

    Args:
        reward: float ``[*B, T]``, the reward of each step.
        value: float ``[*B, T]``, the value of each step's observation.
        next_value: float ``[*B, T]``, the value of each step's next observation.
        terminated: bool ``[*B, T]``, the episode ended at this step (no future value).
        done: bool ``[*B, T]``, terminated or truncated at this step.
        gamma: discount in [0, 1] (a number, or an array ``()`` or ``[*B, T]``).
        lmbda: GAE's lambda in [0, 1] (same forms as ``gamma``).
        mask: optional bool ``[*B, T]``, False on padding (module doc).

    Returns ``(advantage, value_target)``, both ``[*B, T]``:

        delta[t]     = reward[t] + gamma * (not terminated[t]) * next_value[t] - value[t]
        advantage[t] = delta[t] + gamma * lmbda * (not cut[t]) * advantage[t + 1]
        value_target = advantage + value

    with ``cut = done | terminated | t == T - 1 | padding at t + 1``. A terminated step adds no
    future value; a truncated step (done, not terminated) bootstraps from ``next_value[t]`` and
    takes nothing from step ``t + 1`` (the next episode). Padded steps: 0 for both outputs.
    """
    fn = "rlbuf.returns.gae"
    shape, dtype, r, f, term, real, cut = _prepare(fn, reward, {"value": value, "next_value": next_value},
                                                   terminated, done, mask)
    gamma = _coef(fn, "gamma", gamma, shape, dtype, 0.0, 1.0)
    lmbda = _coef(fn, "lmbda", lmbda, shape, dtype, 0.0, 1.0)
    v, nv = f["value"], f["next_value"]
    # The per-step arithmetic runs in the loop body on the raw inputs (one kernel per step, no
    # whole-array passes before the loop: on XLA:CPU each is a kernel launch, which for a PPO
    # batch costs more than its arithmetic). Without a mask the cut is done | terminated (the
    # last step needs none: y[T] = 0).
    xs = {"r": r, "v": v, "nv": nv, "term": term, **({"done": f["done"]} if real is None else {"cut": cut})}
    xs.update({k: c for k, c in (("gamma", gamma), ("lmbda", lmbda)) if c.ndim})  # per-step; else closed over

    def ab(x):
        g = x.get("gamma", gamma)
        delta = x["r"] + g * jnp.where(x["term"], 0, x["nv"]) - x["v"]
        cut = x["cut"] if "cut" in x else x["done"] | x["term"]
        return delta, g * x.get("lmbda", lmbda), cut

    adv = _keep(real, _reverse_scan(ab, xs, _zeros_like_row(r)))
    return adv, _keep(real, adv + v)


def td_lambda(reward, next_value, terminated, done, *, gamma, lmbda, mask=None):
    """TD(lambda) return, TorchRL's ``td_lambda_return_estimate`` (``rolling_gamma=True``) with
    time last.

    Args:
        reward: float ``[*B, T]``, the reward of each step.
        next_value: float ``[*B, T]``, the value of each step's next observation.
        terminated: bool ``[*B, T]``, the episode ended at this step (no future value).
        done: bool ``[*B, T]``, terminated or truncated at this step.
        gamma: discount in [0, 1] (a number, or an array ``()`` or ``[*B, T]``).
        lmbda: lambda in [0, 1] (same forms as ``gamma``).
        mask: optional bool ``[*B, T]``, False on padding (module doc).

    Returns ``value_target`` ``[*B, T]``:

        G[t] = reward[t] + gamma * (not terminated[t]) * next_value[t]                if cut[t]
        G[t] = reward[t] + gamma * ((1 - lmbda) * next_value[t] + lmbda * G[t + 1])   otherwise

    with ``cut`` as in ``gae``: a terminated step adds no future value, a truncated step or the
    batch's last step bootstraps from ``next_value[t]``. ``lmbda=0`` is the TD(0) target,
    ``lmbda=1`` the Monte-Carlo return bootstrapped at cuts. Padded steps: 0.
    """
    fn = "rlbuf.returns.td_lambda"
    shape, dtype, r, f, term, real, cut = _prepare(fn, reward, {"next_value": next_value}, terminated, done, mask)
    gamma = _coef(fn, "gamma", gamma, shape, dtype, 0.0, 1.0)
    lmbda = _coef(fn, "lmbda", lmbda, shape, dtype, 0.0, 1.0)
    nv = f["next_value"]
    # G[t] = r + g*nv + g*l*(G[t+1] - nv) where not cut: one reverse recurrence in G. Selects, not
    # products with 0: next_value at a terminated step is never read, even if NaN/inf.
    gl = gamma * lmbda
    a = r + jnp.where(term, 0, gamma * nv) - jnp.where(cut, 0, gl * nv)
    return _keep(real, _linear(a, gl, cut, _zeros_like_row(a)))


def vtrace(reward, value, next_value, terminated, done, log_rho, *, gamma, lmbda=1.0, rho_clip=1.0,
           c_clip=1.0, mask=None):
    """V-trace off-policy targets (Espeholt et al. 2018, IMPALA), TorchRL's
    ``vtrace_advantage_estimate`` with time last and a ``lmbda`` on the trace coefficients.

    Args:
        reward: float ``[*B, T]``, the reward of each step.
        value: float ``[*B, T]``, the value of each step's observation.
        next_value: float ``[*B, T]``, the value of each step's next observation.
        terminated: bool ``[*B, T]``, the episode ended at this step (no future value).
        done: bool ``[*B, T]``, terminated or truncated at this step.
        log_rho: float ``[*B, T]``, ``log pi(a_t|x_t) - log mu(a_t|x_t)``: the learner policy's
            log-probability of the taken action minus the behaviour policy's (the one stored by
            the collector, e.g. its ``"log_prob"`` extra).
        gamma: discount in [0, 1].
        lmbda: lambda on the trace coefficients, in [0, 1].
        rho_clip: rho bar, > 0 (``inf`` allowed).
        c_clip: c bar, > 0 (``inf`` allowed).
        mask: optional bool ``[*B, T]``, False on padding (as in ``gae``).

    Returns ``(advantage, value_target)``, both ``[*B, T]``:

        rho[t] = min(rho_clip, exp(log_rho[t]));  c[t] = lmbda * min(c_clip, exp(log_rho[t]))
        delta[t] = rho[t] * (reward[t] + gamma * (not terminated[t]) * next_value[t] - value[t])
        vs[t] - value[t] = delta[t] + gamma * c[t] * (not cut[t]) * (vs[t + 1] - value[t + 1])
        advantage[t] = rho[t] * (reward[t] + gamma * (not terminated[t]) * vs_next[t] - value[t])

    where ``vs_next[t] = vs[t + 1]``, or ``next_value[t]`` at a cut (done, last step, padding
    next). ``value_target = vs``. With ``log_rho = 0`` (on-policy), ``lmbda`` and clips >= 1 it
    equals ``td_lambda`` with ``lmbda=1``. Padded steps: 0 for both outputs.
    """
    fn = "rlbuf.returns.vtrace"
    shape, dtype, r, f, term, real, cut = _prepare(
        fn, reward, {"value": value, "next_value": next_value, "log_rho": log_rho}, terminated, done, mask)
    gamma = _coef(fn, "gamma", gamma, shape, dtype, 0.0, 1.0)
    lmbda = _coef(fn, "lmbda", lmbda, shape, dtype, 0.0, 1.0)
    rho_clip = _coef(fn, "rho_clip", rho_clip, shape, dtype, 0.0, math.inf)
    c_clip = _coef(fn, "c_clip", c_clip, shape, dtype, 0.0, math.inf)
    v, nv = f["value"], f["next_value"]
    rho = jnp.exp(f["log_rho"])
    rho_bar = jnp.minimum(rho_clip, rho)
    c = lmbda * jnp.minimum(c_clip, rho)
    delta = rho_bar * (r + gamma * jnp.where(term, 0, nv) - v)
    vs = v + _linear(delta, gamma * c, cut, _zeros_like_row(delta))
    vs_next = jnp.where(cut, nv, _shift(vs, 1))
    adv = rho_bar * (r + gamma * jnp.where(term, 0, vs_next) - v)
    return _keep(real, adv), _keep(real, vs)


def discounted_sum(x, gamma, done, *, mask=None):
    """Discounted sum to the end of each trajectory (TorchRL's ``reward2go``), time last.

    ``x`` float ``[*B, T]``, ``done`` bool ``[*B, T]``, ``gamma`` a number in [0, 1] or an array
    ``()``/``[*B, T]``. Returns ``y`` ``[*B, T]`` with ``y[t] = x[t] + gamma * (not done[t]) * y[t + 1]``
    and ``y[T] = 0``: no bootstrap, nothing flows across a done step (terminated or truncated
    alike) or from a padded step; padded outputs are 0.
    """
    fn = "rlbuf.returns.discounted_sum"
    x = _float_input(fn, "x", x, None)
    if x.ndim < 1:
        raise ValueError(f"{fn}: x must have a time axis ([T], [B, T], [W, B, T]), got a scalar")
    shape = x.shape
    done = _flag_input(fn, "done", done, shape)
    real, cut = _cuts(fn, shape, done, done, mask)
    dtype = _compute_dtype(x)
    gamma = _coef(fn, "gamma", gamma, shape, dtype, 0.0, 1.0)
    a = _keep(real, x.astype(dtype))
    y = _linear(a, gamma, cut, _zeros_like_row(a))
    return _keep(real, y)


def n_step_return(reward, end, *, n_steps: int, gamma: float, mask=None):
    """The n-step building block of ``rlbuf.MultiStep``: truncated discounted sums over windows.

    ``reward`` ``[*B, T, ...]`` (time is axis ``end.ndim - 1``; trailing reward dims allowed),
    ``end`` bool ``[*B, T]``: the window stops after a step where it is True (done, terminated
    or truncated); ``mask`` optional bool ``[*B, T]``, True at real steps. ``n_steps``
    (static int >= 1) and ``gamma`` (static float) are Python numbers.

    Returns ``(ret, steps)``: for each real step ``t`` the window grows from ``t`` and stops
    after the first step ``j`` that ends (``end[j]``), is the row's last step, is followed by
    padding, or is step ``t + n_steps - 1``; ``steps[t] = j - t + 1`` (int32 ``[*B, T]``) and
    ``ret[t] = sum_{i < steps[t]} gamma**i * reward[t + i]`` (reward's shape; float rewards
    keep their dtype, others are float32). Padded steps: ``steps = 0``, ``ret = 0``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"rlbuf.returns.n_step_return: n_steps must be an int >= 1, got {n_steps!r}")
    nd = end.ndim
    ax = nd - 1
    bshape = end.shape
    mask = jnp.ones(bshape, bool) if mask is None else mask
    # A window may continue past step j iff j is real, does not end an episode, and the next
    # step exists and is real.
    cont = mask & ~end & _shift(mask, 1, ax, False)
    rdt = reward.dtype if jnp.issubdtype(reward.dtype, jnp.floating) else jnp.float32
    r = reward.astype(rdt)
    alive = mask
    k = mask.astype(jnp.int32)
    ret = jnp.where(_expand(mask, r), r, 0)
    for i in range(1, n_steps):
        alive = alive & _shift(cont, i - 1, ax, False)
        ret = ret + jnp.where(_expand(alive, r), _shift(r, i, ax) * (gamma ** i), 0)
        k = k + alive.astype(jnp.int32)
    return ret, k
