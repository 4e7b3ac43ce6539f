"""rlbuf.returns against a plain-loop numpy reference (Hypothesis: ndim 1/2/3, random flags,
padding), against TorchRL's functional estimators ([T], [B, T], [W, B, T]), hand-computed
truncation cases, masks, vmap/jit, and input errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf import returns

# ---------------------------------------------------------------------------- numpy reference


def _rows(*xs):
    """Flatten ``[*B, T]`` arrays to ``[N, T]`` float64/bool rows."""
    return [np.asarray(x).reshape(-1, np.shape(x)[-1]) for x in xs]


def _cut(term, done, mask, t, T):
    return done[t] or term[t] or t == T - 1 or not mask[t + 1]


def ref_gae(r, v, nv, term, done, gamma, lmbda, mask):
    shape = np.shape(r)
    r, v, nv, term, done, mask = _rows(r, v, nv, term, done, mask)
    adv = np.zeros(r.shape)
    T = shape[-1]
    for n in range(r.shape[0]):
        nxt = 0.0
        for t in reversed(range(T)):
            if not mask[n, t]:
                nxt = 0.0
                continue
            delta = r[n, t] + (0.0 if term[n, t] else gamma * nv[n, t]) - v[n, t]
            carry = 0.0 if _cut(term[n], done[n], mask[n], t, T) else gamma * lmbda * nxt
            adv[n, t] = nxt = delta + carry
    target = np.where(mask, adv + v, 0.0)
    return adv.reshape(shape), target.reshape(shape)


def ref_td_lambda(r, nv, term, done, gamma, lmbda, mask):
    shape = np.shape(r)
    r, nv, term, done, mask = _rows(r, nv, term, done, mask)
    out = np.zeros(r.shape)
    T = shape[-1]
    for n in range(r.shape[0]):
        g = 0.0
        for t in reversed(range(T)):
            if not mask[n, t]:
                continue
            boot = 0.0 if term[n, t] else nv[n, t]
            if _cut(term[n], done[n], mask[n], t, T):
                g = r[n, t] + gamma * boot
            else:
                g = r[n, t] + gamma * ((1 - lmbda) * nv[n, t] + lmbda * g)
            out[n, t] = g
    return out.reshape(shape)


def ref_vtrace(r, v, nv, term, done, log_rho, gamma, lmbda, rho_clip, c_clip, mask):
    shape = np.shape(r)
    r, v, nv, term, done, log_rho, mask = _rows(r, v, nv, term, done, log_rho, mask)
    T = shape[-1]
    adv, vs = np.zeros(r.shape), np.zeros(r.shape)
    for n in range(r.shape[0]):
        for t in range(T):  # IMPALA's forward sum: vs_t = V_t + sum_s gamma^(s-t) (prod c) delta_s
            if not mask[n, t]:
                continue
            acc, coef, s = v[n, t], 1.0, t
            while True:
                rho = np.exp(log_rho[n, s])
                boot = 0.0 if term[n, s] else nv[n, s]
                acc += coef * min(rho_clip, rho) * (r[n, s] + gamma * boot - v[n, s])
                if _cut(term[n], done[n], mask[n], s, T):
                    break
                coef *= gamma * lmbda * min(c_clip, rho)
                s += 1
            vs[n, t] = acc
        for t in range(T):
            if not mask[n, t]:
                continue
            vnext = nv[n, t] if _cut(term[n], done[n], mask[n], t, T) else vs[n, t + 1]
            boot = 0.0 if term[n, t] else vnext
            adv[n, t] = min(rho_clip, np.exp(log_rho[n, t])) * (r[n, t] + gamma * boot - v[n, t])
    return adv.reshape(shape), vs.reshape(shape)


def ref_discounted_sum(x, gamma, done, mask):
    shape = np.shape(x)
    x, done, mask = _rows(x, done, mask)
    out = np.zeros(x.shape)
    T = shape[-1]
    for n in range(x.shape[0]):
        y = 0.0
        for t in reversed(range(T)):
            if not mask[n, t]:
                y = 0.0
                continue
            y = x[n, t] + (0.0 if _cut(done[n], done[n], mask[n], t, T) else gamma * y)
            out[n, t] = y
    return out.reshape(shape)


def make_data(rng, shape, p_term=0.1, p_trunc=0.1, p_pad=0.0):
    term = rng.random(shape) < p_term
    trunc = (rng.random(shape) < p_trunc) & ~term
    if p_pad:  # padding at the end of rows, as split_trajectories / strict_length=False slices
        lengths = rng.integers(0, shape[-1] + 1, size=shape[:-1])
        mask = np.arange(shape[-1]) < lengths[..., None]
    else:
        mask = np.ones(shape, bool)
    f = lambda: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return dict(r=f(), v=f(), nv=f(), term=term, done=term | trunc, log_rho=0.5 * f(), mask=mask)


# jitted once per shape; the coefficients are traced so every Hypothesis draw reuses the program
@jax.jit
def _all(d, gamma, lmbda, rho_clip, c_clip):
    a = (d["r"], d["v"], d["nv"], d["term"], d["done"])
    m = d["mask"]
    return dict(
        gae=returns.gae(*a, gamma=gamma, lmbda=lmbda, mask=m),
        td=returns.td_lambda(d["r"], d["nv"], d["term"], d["done"], gamma=gamma, lmbda=lmbda, mask=m),
        vtrace=returns.vtrace(*a, d["log_rho"], gamma=gamma, lmbda=lmbda, rho_clip=rho_clip, c_clip=c_clip,
                              mask=m),
        dsum=returns.discounted_sum(d["r"], gamma, d["done"], mask=m),
    )


def check_against_reference(d, gamma, lmbda, rho_clip, c_clip):
    out = _all(d, jnp.float32(gamma), jnp.float32(lmbda), jnp.float32(rho_clip), jnp.float32(c_clip))
    tol = dict(rtol=2e-4, atol=2e-4)
    adv, tgt = ref_gae(d["r"], d["v"], d["nv"], d["term"], d["done"], gamma, lmbda, d["mask"])
    np.testing.assert_allclose(out["gae"][0], adv, **tol)
    np.testing.assert_allclose(out["gae"][1], tgt, **tol)
    np.testing.assert_allclose(out["td"], ref_td_lambda(d["r"], d["nv"], d["term"], d["done"], gamma, lmbda,
                                                        d["mask"]), **tol)
    adv, vs = ref_vtrace(d["r"], d["v"], d["nv"], d["term"], d["done"], d["log_rho"], gamma, lmbda, rho_clip,
                         c_clip, d["mask"])
    np.testing.assert_allclose(out["vtrace"][0], adv, **tol)
    np.testing.assert_allclose(out["vtrace"][1], vs, **tol)
    np.testing.assert_allclose(out["dsum"], ref_discounted_sum(d["r"], gamma, d["done"], d["mask"]), **tol)


@settings(max_examples=40, deadline=None)
@given(
    lead=st.sampled_from([(), (2,), (3,), (2, 2), (17,)]),  # 17 rows: gae's precomputed path
    T=st.sampled_from([1, 2, 5, 9]),
    gamma=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    lmbda=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
    clips=st.sampled_from([(1.0, 1.0), (0.5, 2.0), (np.inf, np.inf)]),
    p=st.sampled_from([(0.0, 0.0, 0.0), (0.2, 0.2, 0.0), (0.1, 0.3, 0.5), (0.5, 0.0, 0.5)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_numpy_reference(lead, T, gamma, lmbda, clips, p, seed):
    """ndim 1/2/3, random terminated/truncated flags, padding, extreme gamma/lambda/clips."""
    d = make_data(np.random.default_rng(seed), lead + (T,), *p)
    check_against_reference(d, gamma, lmbda, *clips)


# ---------------------------------------------------------------------------- TorchRL


@pytest.mark.parametrize("shape", [(11,), (3, 11), (2, 3, 11), (5, 4, 11)], ids=["T", "BT", "WBT", "WBT-20rows"])
def test_matches_torchrl(shape):
    pytest.importorskip("torchrl")
    import torch
    from torchrl.objectives.value import functional as F

    rng = np.random.default_rng(len(shape))
    d = make_data(rng, shape, p_term=0.15, p_trunc=0.15)
    t = {k: torch.from_numpy(np.asarray(x))[..., None] for k, x in d.items()}  # TorchRL: [*B, T, 1]
    gamma, lmbda = 0.97, 0.9
    tol = dict(rtol=1e-5, atol=1e-5)

    def close(ours, theirs):
        np.testing.assert_allclose(np.asarray(ours), theirs[..., 0].numpy(), **tol)

    a = (d["r"], d["v"], d["nv"], d["term"], d["done"])
    adv, tgt = returns.gae(*a, gamma=gamma, lmbda=lmbda)
    t_adv, t_tgt = F.generalized_advantage_estimate(gamma, lmbda, t["v"], t["nv"], t["r"], t["done"], t["term"])
    close(adv, t_adv)
    close(tgt, t_tgt)
    t_adv, _ = F.vec_generalized_advantage_estimate(gamma, lmbda, t["v"], t["nv"], t["r"], t["done"], t["term"])
    close(adv, t_adv)

    ret = returns.td_lambda(d["r"], d["nv"], d["term"], d["done"], gamma=gamma, lmbda=lmbda)
    close(ret, F.td_lambda_return_estimate(gamma, lmbda, t["nv"], t["r"], t["done"], t["term"]))

    for rho_clip, c_clip in [(1.0, 1.0), (2.0, 0.7)]:
        adv, vs = returns.vtrace(*a, d["log_rho"], gamma=gamma, rho_clip=rho_clip, c_clip=c_clip)
        # TorchRL: rho = exp(log_pi - log_mu), log_pi the learner's, log_mu the behaviour's
        t_adv, t_vs = F.vtrace_advantage_estimate(gamma, t["log_rho"], torch.zeros_like(t["log_rho"]), t["v"],
                                                  t["nv"], t["r"], t["done"], t["term"], rho_thresh=rho_clip,
                                                  c_thresh=c_clip)
        close(adv, t_adv)
        close(vs, t_vs)

    y = returns.discounted_sum(d["r"], gamma, d["done"])
    close(y, F.reward2go(t["r"], t["done"], gamma))


# ---------------------------------------------------------------------------- hand-computed


def test_truncation_bootstraps_from_next_value():
    """Episode 1: steps 0-2, truncated at 2 (bootstrap V(final obs) = 10). Episode 2: steps
    3-4, terminated at 4 (no bootstrap; its next_value of 1000 must be ignored)."""
    r = jnp.array([1.0, 1.0, 1.0, 2.0, 2.0])
    v = jnp.array([0.5, 0.5, 0.5, 0.5, 0.5])
    nv = jnp.array([0.5, 0.5, 10.0, 0.5, 1000.0])  # nv[2]: V of the final observation of episode 1
    term = jnp.array([False, False, False, False, True])
    done = jnp.array([False, False, True, False, True])
    g, lam = 0.5, 1.0
    adv, tgt = returns.gae(r, v, nv, term, done, gamma=g, lmbda=lam)
    # lambda = 1: targets are discounted returns bootstrapped at the truncation
    np.testing.assert_allclose(tgt, [1 + g * (1 + g * (1 + g * 10)), 1 + g * (1 + g * 10), 1 + g * 10,
                                     2 + g * 2, 2.0], rtol=1e-6)
    np.testing.assert_allclose(adv, np.asarray(tgt) - 0.5, rtol=1e-6)
    np.testing.assert_allclose(returns.td_lambda(r, nv, term, done, gamma=g, lmbda=lam), tgt, rtol=1e-6)
    _, vs = returns.vtrace(r, v, nv, term, done, jnp.zeros(5), gamma=g)
    np.testing.assert_allclose(vs, tgt, rtol=1e-6)
    # lambda = 0: one-step TD targets
    np.testing.assert_allclose(returns.td_lambda(r, nv, term, done, gamma=g, lmbda=0.0),
                               [1 + g * 0.5, 1 + g * 0.5, 1 + g * 10, 2 + g * 0.5, 2.0], rtol=1e-6)
    # PureJaxRL's GAE treats the truncation as a termination: target[2] would be 1, not 6
    assert float(tgt[2]) == pytest.approx(6.0)
    # the batch's last step bootstraps like a truncation when it is not terminated
    tgt_open = returns.gae(r, v, nv, term.at[4].set(False), done.at[4].set(False), gamma=g, lmbda=lam)[1]
    assert float(tgt_open[4]) == pytest.approx(2 + g * 1000)
    np.testing.assert_allclose(returns.discounted_sum(r, g, done), [1.75, 1.5, 1.0, 3.0, 2.0])


def test_mask_equals_unpadded_computation_and_blocks_nan():
    rng = np.random.default_rng(0)
    lengths = [7, 3, 0, 10]
    d = make_data(rng, (4, 10), 0.2, 0.2)
    mask = np.arange(10) < np.array(lengths)[:, None]
    pad = lambda x, fill: np.where(mask, x, fill)  # noqa: E731
    nan_d = dict(d, r=pad(d["r"], np.nan), v=pad(d["v"], np.nan), nv=pad(d["nv"], np.inf),
                 log_rho=pad(d["log_rho"], np.nan), mask=mask)
    out = _all(nan_d, 0.9, 0.8, 1.0, 1.0)
    for name, x in jax.tree_util.tree_leaves_with_path(out):
        assert np.all(np.isfinite(x)), name
        assert np.all(np.asarray(x)[~mask] == 0), name
    for i, n in enumerate(lengths):  # each row alone, cut to its real length, without a mask
        if n == 0:
            continue
        row = {k: v[i, :n] for k, v in d.items()}
        row["mask"] = np.ones(n, bool)
        ref = _all(row, 0.9, 0.8, 1.0, 1.0)
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(x)[i, :n], y, rtol=1e-5, atol=1e-5, err_msg=str(path))


def test_mask_in_the_middle_cuts_both_segments():
    """A padded step between two real segments: each segment is computed on its own."""
    d = make_data(np.random.default_rng(1), (9,), 0.0, 0.0)
    mask = np.ones(9, bool)
    mask[4] = False
    out = _all(dict(d, mask=mask), 0.9, 0.9, 1.0, 1.0)
    for sl in (slice(0, 4), slice(5, 9)):
        seg = {k: v[sl] for k, v in d.items()}
        ref = _all(seg, 0.9, 0.9, 1.0, 1.0)
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(x)[sl], y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- properties


def test_estimators_agree_when_values_are_consistent():
    """With next_value[t] == value[t + 1] inside episodes: gae's target == td_lambda's for any
    lambda, and on-policy vtrace (log_rho = 0, lambda = 1) == both with lambda = 1."""
    rng = np.random.default_rng(3)
    d = make_data(rng, (3, 12), 0.1, 0.1)
    nv = np.concatenate([d["v"][:, 1:], rng.normal(size=(3, 1)).astype(np.float32)], axis=1)
    nv = np.where(d["done"], d["nv"], nv)
    a = (d["r"], d["v"], nv, d["term"], d["done"])
    for lam in (0.0, 0.7, 1.0):
        np.testing.assert_allclose(returns.gae(*a, gamma=0.95, lmbda=lam)[1],
                                   returns.td_lambda(d["r"], nv, d["term"], d["done"], gamma=0.95, lmbda=lam),
                                   rtol=1e-5, atol=1e-5)
    adv_g, tgt_g = returns.gae(*a, gamma=0.95, lmbda=1.0)
    adv_v, vs = returns.vtrace(*a, np.zeros_like(nv), gamma=0.95)
    np.testing.assert_allclose(vs, tgt_g, rtol=1e-5, atol=1e-5)


def test_per_step_gamma_and_vmap_and_jit_cache():
    d = make_data(np.random.default_rng(4), (2, 3, 6), 0.2, 0.2)
    gammas = np.full((2, 3, 6), 0.9, np.float32)
    a = (d["r"], d["v"], d["nv"], d["term"], d["done"])
    np.testing.assert_allclose(returns.gae(*a, gamma=gammas, lmbda=0.8)[0], returns.gae(*a, gamma=0.9, lmbda=0.8)[0],
                               rtol=1e-6)
    for rows in (3, 20):  # both gae paths; a different gamma per row == one call per row
        d2 = make_data(np.random.default_rng(rows), (rows, 6), 0.2, 0.2)
        a2 = (d2["r"], d2["v"], d2["nv"], d2["term"], d2["done"])
        g_rows = np.linspace(0.5, 1.0, rows, dtype=np.float32)
        per_step = np.repeat(g_rows[:, None], 6, axis=1)
        for est in (lambda *x, **k: returns.gae(*x, **k)[0], lambda *x, **k: returns.gae(*x, **k)[1]):
            full = est(*a2, gamma=per_step, lmbda=0.8)
            for i in range(0, rows, 7):
                np.testing.assert_allclose(full[i], est(*(x[i] for x in a2), gamma=float(g_rows[i]), lmbda=0.8),
                                           rtol=1e-5, atol=1e-5)
    f = jax.jit(functools.partial(returns.gae, gamma=0.9, lmbda=0.8))
    vm = jax.vmap(jax.vmap(f))(*a)  # vmap over [W, B] of [T] rows
    for x, y in zip(vm, f(*a)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    g = jax.jit(functools.partial(returns.td_lambda, gamma=0.9, lmbda=0.8))
    for i in range(3):  # new data, same shapes: one program
        g(d["r"] + i, d["nv"] - i, d["term"], d["done"])
    assert g._cache_size() == 1


def test_bfloat16_is_computed_in_float32():
    d = make_data(np.random.default_rng(5), (8,))
    bf = {k: (jnp.asarray(v, jnp.bfloat16) if v.dtype == np.float32 else v) for k, v in d.items()}
    adv, tgt = returns.gae(bf["r"], bf["v"], bf["nv"], bf["term"], bf["done"], gamma=0.9, lmbda=0.9)
    assert adv.dtype == jnp.float32 and tgt.dtype == jnp.float32


# ---------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    r = jnp.zeros((2, 5))
    b = jnp.zeros((2, 5), bool)
    with pytest.raises(ValueError, match="next_value has shape \\[2, 4\\]"):
        returns.gae(r, r, r[:, :4], b, b, gamma=0.9, lmbda=0.9)
    with pytest.raises(TypeError, match="done must be a bool"):
        returns.gae(r, r, r, b, r, gamma=0.9, lmbda=0.9)
    with pytest.raises(TypeError, match="value must be a float"):
        returns.gae(r, b, r, b, b, gamma=0.9, lmbda=0.9)
    with pytest.raises(ValueError, match="gamma must be in"):
        returns.td_lambda(r, r, b, b, gamma=1.5, lmbda=0.9)
    with pytest.raises(ValueError, match="lmbda must be in"):
        returns.td_lambda(r, r, b, b, gamma=0.9, lmbda=float("nan"))
    with pytest.raises(ValueError, match="rho_clip must be in"):
        returns.vtrace(r, r, r, b, b, r, gamma=0.9, rho_clip=-1.0)
    with pytest.raises(ValueError, match="mask has shape"):
        returns.discounted_sum(r, 0.9, b, mask=b[0])
    with pytest.raises(ValueError, match="gamma has shape"):
        returns.discounted_sum(r, jnp.zeros(5), b)
    with pytest.raises(ValueError, match="time axis"):
        returns.discounted_sum(jnp.float32(1.0), 0.9, jnp.bool_(True))
    with pytest.raises(ValueError, match="log_rho has shape"):  # also at trace time
        jax.jit(lambda x: returns.vtrace(x, x, x, b, b, x[0], gamma=0.9))(r)


# ---------------------------------------------------------------------------- NaN/inf never leak (issue 26)


def test_td_lambda_ignores_nan_next_value_at_terminated_step():
    nan = float("nan")
    term = jnp.array([0, 1, 0, 0], bool)
    for bad in (nan, float("inf"), -float("inf")):
        out = returns.td_lambda(jnp.ones(4), jnp.array([0.5, bad, 0.5, 0.5]), term, term, gamma=0.9, lmbda=0.95)
        np.testing.assert_allclose(out, [1.8775, 1.0, 2.26225, 1.45], rtol=1e-6)
    # gae and vtrace read next_value at a terminated step just as little
    v = jnp.full(4, 0.25)
    adv, tgt = returns.gae(jnp.ones(4), v, jnp.array([0.5, nan, 0.5, 0.5]), term, term, gamma=0.9, lmbda=0.95)
    assert np.isfinite(adv).all() and np.isfinite(tgt).all()
    adv, tgt = returns.vtrace(jnp.ones(4), v, jnp.array([0.5, nan, 0.5, 0.5]), term, term, jnp.zeros(4), gamma=0.9)
    assert np.isfinite(adv).all() and np.isfinite(tgt).all()


def test_discounted_sum_nan_does_not_cross_done():
    out = returns.discounted_sum(jnp.array([1.0, float("nan")]), 0.9, jnp.array([True, False]))
    assert out[0] == 1.0 and np.isnan(out[1])


@pytest.mark.parametrize("rows", [(), (3,), (20,)])  # 20 rows: more rows than a PPO batch
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_never_flow_back_across_a_done_step(rows, bad):
    """Every input of the episode after a done step is NaN/inf: the first episode's outputs are
    exactly those computed on the first episode alone."""
    rng = np.random.default_rng(0)
    T, cut = 6, 3  # steps 0..2 are one episode, done at step 2 (truncated in half the checks)
    shape = rows + (T,)
    r, v, nv, lr = (rng.normal(size=shape).astype(np.float32) for _ in range(4))
    for x in (r, v, nv, lr):
        x[..., cut:] = bad
    for terminated_end in (True, False):
        done = np.zeros(shape, bool)
        done[..., cut - 1] = True
        term = done if terminated_end else np.zeros(shape, bool)
        head = lambda x: x[..., :cut]  # noqa: E731
        kw = dict(gamma=0.9, lmbda=0.8)
        got = [returns.gae(r, v, nv, term, done, **kw), returns.td_lambda(r, nv, term, done, **kw),
               returns.vtrace(r, v, nv, term, done, lr, gamma=0.9, lmbda=0.8),
               returns.discounted_sum(r, 0.9, done)]
        want = [returns.gae(head(r), head(v), head(nv), head(term), head(done), **kw),
                returns.td_lambda(head(r), head(nv), head(term), head(done), **kw),
                returns.vtrace(head(r), head(v), head(nv), head(term), head(done), head(lr), gamma=0.9, lmbda=0.8),
                returns.discounted_sum(head(r), 0.9, head(done))]
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert np.isfinite(w).all()
            np.testing.assert_allclose(head(g), w, rtol=1e-6)


def test_n_step_return_refuses_zero_steps():
    end = jnp.zeros(4, bool)
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
            returns.n_step_return(jnp.ones(4), end, n_steps=n, gamma=0.9)
    ret, k = returns.n_step_return(jnp.ones(4), end, n_steps=2, gamma=0.5)
    np.testing.assert_allclose(ret, [1.5, 1.5, 1.5, 1.0])
