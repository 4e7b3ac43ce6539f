"""``Collector``: TorchRL's synchronous data collector as a pure, jittable function."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._spaces import action_spec, has_action_space, sample_action


def _gymnax_environment_class():
    """gymnax's ``Environment`` base class if gymnax is loaded, else None.

    Not imported here: importing gymnax runs JAX computations (starting the backend, after
    which ``jax.distributed.initialize`` refuses to run), and an env that is a gymnax
    ``Environment`` has necessarily loaded it already.
    """
    mod = sys.modules.get("gymnax.environments.environment")
    return None if mod is None else mod.Environment


def _strong(x: Any) -> jax.Array:
    """As an array without weak type, so that the state's avals never change between calls
    (a weak-typed leaf in ``init``'s output would make the second ``collect`` retrace)."""
    x = jnp.asarray(x)
    return jnp.asarray(x, dtype=x.dtype)


def _tree_select(mask: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Per-env ``where``: ``mask`` is ``[B]``, leaves are ``[B, ...]``."""

    def sel(a, b):
        m = mask.reshape(mask.shape + (1,) * (jnp.ndim(b) - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(sel, on_true, on_false)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CollectorState:
    """Everything a :class:`Collector` carries between batches (a pytree; checkpointable).

    Env-indexed leaves have a leading ``[N]`` axis, ``N`` = number of envs (``W * B`` in
    worker-major order for :class:`MultiSyncCollector`); with ``num_envs=None`` there is no env
    axis.

    Attributes:
        env_state: the envs' states ``[N, ...]``.
        observation: the observation each env will act on next ``[N, ...]``.
        key: PRNG key for the next batch.
        traj_ids: int32 ``[N]`` current trajectory id of each env.
        next_traj_id: int32 ``[]`` the global counter: id given to the next env that resets.
        step_count: int32 ``[N]`` steps since each env's last reset.
        episode_reward: float32 ``[N]`` return of each env's running episode so far.
        frames: int32 ``[]`` frames collected so far (all envs).
    """

    env_state: Any
    observation: Any
    key: jax.Array
    traj_ids: jax.Array
    next_traj_id: jax.Array
    step_count: jax.Array
    episode_reward: jax.Array
    frames: jax.Array


def _param_axis(reference: Any, params: Any) -> int | None:
    """How many leading axes ``params`` has beyond ``reference`` (None: cannot tell)."""
    if reference is None:
        return None
    try:
        pairs = jax.tree.leaves(jax.tree.map(lambda p, r: (np.ndim(p) - np.ndim(r),), params,
                                             reference))
    except (ValueError, TypeError):
        return None
    extra = set(pairs)
    if len(extra) != 1:
        raise ValueError(
            "env_params leaves disagree on their number of leading (per-env) axes relative to "
            f"env.default_params: {sorted(extra)}"
        )
    return extra.pop()


def _default_params(env: Any) -> Any:
    try:
        return env.default_params
    except (AttributeError, NotImplementedError):
        return None


def _leading_sizes(params: Any, naxes: int) -> set:
    return {tuple(np.shape(x)[:naxes]) for x in jax.tree.leaves(params)}


@dataclasses.dataclass(frozen=True, eq=False)
class Collector:
    """Synchronous data collector (TorchRL's ``SyncDataCollector``) as pure functions.

    .. code-block:: python

        collector = Collector(env, policy, frames_per_batch=1024, num_envs=8)
        cstate = collector.init(key)
        cstate, batch = collector.collect(cstate, policy_params)   # jit/scan-safe

    ``collect`` is a ``lax.scan`` over ``T`` steps of ``num_envs`` vmapped envs; the collector is
    frozen and hashed by identity, so ``jax.jit(collector.collect)`` compiles once.

    Env protocol:
        A gymnax (>= 1.0) ``Environment`` subclass is driven through its ``step_env``,
        ``is_truncated`` (time limit) and ``reset_env``, so the final observation and
        terminated/truncated are exact. Any other object (custom envs, gymnax wrappers) needs
        ``reset(key, params) -> (obs, state)`` and
        ``step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``
        (a 5-tuple ``(obs, state, reward, done, info)`` is read as ``terminated=done``,
        ``truncated=False``). If ``info`` holds ``"final_observation"`` (gymnax 1.0's ``step``
        does), the env is taken to auto-reset: the returned ``obs``/``state`` are the reset ones
        and ``info["final_observation"]`` is the true next observation. Otherwise the env is
        taken not to auto-reset and the collector calls ``reset`` where an episode ended.
        ``action_space(params)`` returning a gymnax space is needed for ``policy=None`` and
        ``init_random_frames``, and enables the policy-output checks.

    Args:
        env: the environment (see above). Only its functions are used; parameters go in
            ``env_params``.
        policy: ``policy(params, observation, key) -> action`` or ``-> (action, extras)``, called
            once per step on all envs' observations (leading ``[B]`` axis; none when
            ``num_envs=None``). ``extras`` (a dict) is stored at the batch root. ``None``:
            uniform random actions from ``env.action_space``.
        frames_per_batch: frames per ``collect`` over all envs; ``T = frames_per_batch // B``.
        env_params: env parameters (default ``env.default_params``); may carry a leading
            ``[num_envs]`` axis, one set per env (domain randomization): detected by comparing
            leaf ranks with ``env.default_params`` or, for envs without ``default_params``, when
            every leaf has a leading axis of size ``num_envs``. They are constants of the
            compiled ``collect`` (not part of the state): build a new collector to change them.
        num_envs: ``None`` for one env (leaves ``[T, ...]``) or ``B`` (leaves ``[B, T, ...]``).
        max_frames_per_traj: truncate (``("next","truncated")``) and reset an episode at its
            ``n``-th step. ``None`` (or ``-1``) disables.
        init_random_frames: a batch uses random actions when fewer than this many frames were
            collected before it (TorchRL's rule, so it rounds up to whole batches). Policy
            extras are zeros in such batches.
        reset_at_each_iter: reset every env at the start of each ``collect`` (except the first,
            whose envs are fresh from ``init``), giving them fresh trajectory ids.
        postproc: a pure function applied to each batch inside ``collect``.

    Batch (nested dict; leaves ``[T, ...]`` or ``[B, T, ...]``, time last):
        ``"observation"``: observation acted on. ``"action"``: the action taken.
        ``"step_count"``: int32 steps since the reset (0 at the episode's first step).
        ``("next","observation")``: the true next observation (the final one at a done step;
        the following step's ``"observation"`` is then the reset observation).
        ``("next","reward")``: float32. ``("next","terminated")``, ``("next","truncated")``,
        ``("next","done")``: bool ``[..., T]`` with no trailing singleton (TorchRL has one);
        ``done = terminated | truncated``; truncated comes from the env's time limit or
        ``max_frames_per_traj`` (both flags may be True at once, as in gymnasium).
        ``("next","episode_reward")``: float32 running return, this step included.
        ``("collector","traj_ids")``: int32 trajectory id. Env ``i`` starts with ``i``; after
        each step, the envs that are done take the next ids of one global counter in env
        order. Ids never repeat; a trajectory spanning batches keeps its id.
        Plus the policy's extras at the root.
    """

    env: Any
    policy: Callable | None = None
    _: dataclasses.KW_ONLY
    frames_per_batch: int
    env_params: Any = None
    num_envs: int | None = None
    max_frames_per_traj: int | None = None
    init_random_frames: int = 0
    reset_at_each_iter: bool = False
    postproc: Callable | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        fpb = self.frames_per_batch
        if not isinstance(fpb, (int, np.integer)) or isinstance(fpb, bool) or fpb <= 0:
            raise ValueError(f"frames_per_batch must be a positive int, got {fpb!r}")
        n = self.num_envs
        if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool)
                              or n <= 0):
            raise ValueError(f"num_envs must be None or a positive int, got {n!r}")
        num = 1 if n is None else int(n)
        if fpb % num:
            raise ValueError(
                f"frames_per_batch={fpb} is not divisible by num_envs={num} "
                f"({fpb} % {num} = {fpb % num})"
            )
        mf = self.max_frames_per_traj
        if mf is not None and mf <= 0:
            mf = None
        set_("max_frames_per_traj", None if mf is None else int(mf))
        if self.init_random_frames is None:
            set_("init_random_frames", 0)
        if (self.policy is None or self.init_random_frames > 0) and not has_action_space(
            self.env
        ):
            raise ValueError(
                "random actions (policy=None or init_random_frames>0) need env.action_space"
            )
        set_("_num", num)
        set_("_T", fpb // num)
        base = _gymnax_environment_class()
        native = base is not None and isinstance(self.env, base) and type(self.env).step is base.step
        set_("_native", native)

        reference = _default_params(self.env)
        params = reference if self.env_params is None else self.env_params
        naxes = _param_axis(reference, params) if self.env_params is not None else 0
        if naxes is None:  # no reference: a common leading axis of size num_envs is per-env
            sizes = _leading_sizes(params, 1)
            leaves = jax.tree.leaves(params)
            naxes = int(
                n is not None and bool(leaves) and sizes == {(num,)}
                and all(np.ndim(x) >= 1 for x in leaves)
            )
        if naxes not in (0, 1):
            raise ValueError(f"env_params has {naxes} leading axes; at most one (num_envs) is "
                             "allowed")
        if naxes == 1:
            sizes = _leading_sizes(params, 1)
            if n is None or sizes != {(num,)}:
                got = sorted(s[0] for s in sizes)
                raise ValueError(
                    f"env_params has a per-env leading axis of size {got} but num_envs={n}"
                )
        params = jax.tree.map(_strong, params) if params is not None else None
        set_("_params", params)
        set_("_params_batched", naxes == 1)
        one = jax.tree.map(lambda x: x[0], params) if naxes == 1 else params
        set_("_action_spec", action_spec(self.env, one))

    # ------------------------------------------------------------------ env helpers
    @property
    def _pax(self):
        return 0 if self._params_batched else None

    def _env_map(self, fn, in_axes):
        """``vmap`` over envs; a single-env collector (``num_envs=None``) runs ``fn`` as is,
        without a size-1 env axis (cheaper per step, and its state has no env axis)."""
        return fn if self.num_envs is None else jax.vmap(fn, in_axes=in_axes)

    def _env_keys(self, key):
        return key if self.num_envs is None else jax.random.split(key, self._num)

    def _env_zeros(self, dtype):
        return jnp.zeros(() if self.num_envs is None else (self._num,), dtype)

    def _env_range(self, start):
        if self.num_envs is None:
            return jnp.asarray(start, jnp.int32)
        return start + jnp.arange(self._num, dtype=jnp.int32)

    def _reset_one(self, key, params):
        if self._native:
            return self.env.reset_env(key, params)
        return self.env.reset(key, params)

    def _reset_all(self, key, params):
        obs, st = self._env_map(self._reset_one, (0, self._pax))(self._env_keys(key), params)
        return jax.tree.map(_strong, obs), jax.tree.map(_strong, st)

    def _transition(self, key, state, action, params):
        """One env step, without any reset applied. Returns ``(next_obs, cont_obs, cont_state,
        reward, terminated, truncated, env_did_reset, reset_obs, reset_state)``; ``cont_*`` are
        what the env itself continues from (the reset ones if it auto-reset)."""
        env = self.env
        k_step, k_reset = jax.random.split(key)
        if self._native:
            obs, st, reward, term, _ = env.step_env(k_step, state, action, params)
            if hasattr(env, "is_truncated"):
                trunc = env.is_truncated(st, params)
            else:  # gymnax < 1.0: step_env's done includes the time limit
                trunc = st.time >= params.max_steps_in_episode
                term = jnp.logical_and(term, jnp.logical_not(trunc))
            next_obs, did_reset = obs, jnp.zeros((), bool)
        else:
            out = env.step(k_step, state, action, params)
            if len(out) == 6:
                obs, st, reward, term, trunc, info = out
            elif len(out) == 5:
                obs, st, reward, term, info = out
                trunc = jnp.zeros((), bool)
            else:
                raise TypeError(f"env.step must return 5 or 6 values, got {len(out)}")
            if isinstance(info, dict) and "final_observation" in info:
                next_obs = info["final_observation"]
                did_reset = jnp.logical_or(term, trunc)
            else:
                next_obs, did_reset = obs, jnp.zeros((), bool)
        reset_obs, reset_st = self._reset_one(k_reset, params)
        return (next_obs, obs, st, jnp.asarray(reward, jnp.float32), jnp.asarray(term, bool),
                jnp.asarray(trunc, bool), jnp.asarray(did_reset, bool), reset_obs, reset_st)

    # ------------------------------------------------------------------ policy helpers
    def _random_actions(self, key, params):
        sample = lambda k, p: sample_action(self.env, k, p)
        return self._env_map(sample, (0, self._pax))(self._env_keys(key), params)

    def _call_policy(self, policy_params, obs, key):
        out = self.policy(policy_params, obs, key)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            action, extras = out
        else:
            action, extras = out, {}
        extras = dict(extras)
        self._check_action(action)
        return action, extras

    def _check_action(self, action):
        spec = self._action_spec
        if spec is None:
            return
        lead = () if self.num_envs is None else (self._num,)
        a_leaves, a_def = jax.tree.flatten(action)
        s_leaves, s_def = jax.tree.flatten(spec)
        if a_def != s_def:
            raise TypeError(
                f"policy action structure {a_def} does not match the action space's {s_def}"
            )
        pairs = zip(a_leaves, s_leaves)
        for a, s in pairs:
            got = tuple(jnp.shape(a))
            want = lead + tuple(s.shape)
            if got != want:
                raise ValueError(
                    f"policy returned an action of shape {got}, expected {want} "
                    f"(num_envs={self.num_envs}, action space shape {tuple(s.shape)})"
                )
            if jnp.result_type(a) != s.dtype:
                raise TypeError(
                    f"policy returned an action of dtype {jnp.result_type(a)}, the env's "
                    f"action space has dtype {s.dtype}"
                )

    # ------------------------------------------------------------------ public API
    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch dims of every leaf of a batch: ``(T,)`` or ``(B, T)``."""
        return (self._T,) if self.num_envs is None else (self._num, self._T)

    def init(self, key: jax.Array) -> CollectorState:
        """Reset every env; returns the initial :class:`CollectorState` (jittable)."""
        key, k_reset = jax.random.split(key)
        obs, st = self._reset_all(k_reset, self._params)
        return CollectorState(
            env_state=st,
            observation=obs,
            key=key,
            traj_ids=self._env_range(0),
            next_traj_id=jnp.asarray(self._num, jnp.int32),
            step_count=self._env_zeros(jnp.int32),
            episode_reward=self._env_zeros(jnp.float32),
            frames=jnp.zeros((), jnp.int32),
        )

    def collect(self, state: CollectorState, policy_params: Any = None):
        """Collect one batch; returns ``(new_state, batch)`` (pure; safe under jit and scan)."""
        if self.reset_at_each_iter:
            state = self._reset_at_iter(state)
        if self.policy is None:
            carry, traj = self._rollout(state, policy_params, random=True)
        elif self.init_random_frames > 0:
            carry, traj = jax.lax.cond(
                state.frames < self.init_random_frames,
                lambda s, p: self._rollout(s, p, random=True),
                lambda s, p: self._rollout(s, p, random=False),
                state, policy_params,
            )
        else:
            carry, traj = self._rollout(state, policy_params, random=False)
        if self.num_envs is None:
            batch = traj
        else:  # scan is time-major; TorchRL's layout has time last
            batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), traj)
        if self.postproc is not None:
            batch = self.postproc(batch)
        return carry, batch

    # ------------------------------------------------------------------ internals
    def _reset_at_iter(self, state: CollectorState) -> CollectorState:
        key, k_reset = jax.random.split(state.key)
        obs, st = self._reset_all(k_reset, self._params)
        fresh = state.frames > 0  # the first batch's envs are already fresh from init
        num = self._num
        ids = jnp.where(fresh, self._env_range(state.next_traj_id), state.traj_ids)
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(fresh, x, y), a, b)
        return dataclasses.replace(
            state,
            env_state=pick(st, state.env_state),
            observation=pick(obs, state.observation),
            key=key,
            traj_ids=ids,
            next_traj_id=state.next_traj_id + jnp.where(fresh, num, 0).astype(jnp.int32),
            step_count=jnp.where(fresh, 0, state.step_count),
            episode_reward=jnp.where(fresh, 0.0, state.episode_reward),
        )

    def _extras_like(self, state, policy_params):
        if self.policy is None:
            return {}
        shapes = jax.eval_shape(
            lambda p, o, k: self._call_policy(p, o, k)[1], policy_params, state.observation,
            state.key,
        )
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def _rollout(self, state: CollectorState, policy_params: Any, random: bool):
        # env params are compile-time constants of the collector (as in a hand-written
        # rollout closing over them), so XLA can fold what depends only on them
        params = self._params
        extras0 = self._extras_like(state, policy_params) if random else None
        mf = self.max_frames_per_traj
        pax = self._pax

        def body(c: CollectorState, _):
            key, k_pol, k_env = jax.random.split(c.key, 3)
            if random:
                action, extras = self._random_actions(k_pol, params), extras0
            else:
                action, extras = self._call_policy(policy_params, c.observation, k_pol)
            (next_obs, cont_obs, cont_st, reward, term, trunc, did_reset, reset_obs,
             reset_st) = self._env_map(self._transition, (0, 0, 0, pax))(
                self._env_keys(k_env), c.env_state, action, params
            )
            new = {}
            if mf is not None:
                count = c.step_count + 1
                trunc = jnp.logical_or(trunc, count >= mf)
            done = jnp.logical_or(term, trunc)
            if mf is not None:
                new["step_count"] = jnp.where(done, 0, count)
            need_reset = jnp.logical_and(done, jnp.logical_not(did_reset))
            ret = c.episode_reward + reward
            step = {
                "observation": c.observation,
                "action": action,
                "next": {
                    "observation": next_obs,
                    "reward": reward,
                    "terminated": term,
                    "truncated": trunc,
                    "episode_reward": ret,
                },
                **extras,
            }
            new = dataclasses.replace(
                c,
                key=key,
                env_state=_tree_select(need_reset, reset_st, cont_st),
                observation=_tree_select(need_reset, reset_obs, cont_obs),
                episode_reward=jnp.where(done, 0.0, ret),
                **new,
            )
            return new, step

        # Only what the env dynamics need is carried through the loop: loop invariants are
        # closed over, and trajectory ids and step counts (pure functions of the done flags)
        # are computed after it with a few vectorized ops instead of per-step work.
        slim = dataclasses.replace(state, frames=None, traj_ids=None, next_traj_id=None,
                                   step_count=state.step_count if mf is not None else None)
        carry, traj = jax.lax.scan(body, slim, None, length=self._T)
        nxt = traj["next"]
        done = jnp.logical_or(nxt["terminated"], nxt["truncated"])
        traj["next"] = {**nxt, "done": done}
        ids, last_ids, next_id = _traj_ids(done, state.traj_ids, state.next_traj_id)
        counts, last_count = _step_counts(done, state.step_count)
        traj["step_count"] = counts
        traj["collector"] = {"traj_ids": ids}
        carry = dataclasses.replace(
            carry,
            frames=state.frames + jnp.asarray(self._T * self._num, jnp.int32),
            traj_ids=last_ids,
            next_traj_id=next_id,
            step_count=last_count,
        )
        return carry, traj


def _scan(op, x, axis):
    # jnp.cumsum / lax.cummax lower to reduce_window, several times slower on CPU than this
    return jax.lax.associative_scan(op, x, axis=axis)


def _traj_ids(done: jax.Array, ids0: jax.Array, next_id: jax.Array):
    """Trajectory ids of a time-major ``done`` ``[T, *E]`` rollout (TorchRL's rule: after each
    step, the done envs take the next ids of the global counter, in env order).

    Returns the ids of every step ``[T, *E]``, the ids after the last step, and the counter.
    """
    T = done.shape[0]
    d = done.reshape(T, -1).astype(jnp.int32)
    # dones before (t, i) in time-major then env order = rank of the id it is given
    per_step = jnp.sum(d, axis=1, dtype=jnp.int32)
    before = (_scan(jnp.add, per_step, 0) - per_step)[:, None] + _scan(jnp.add, d, 1) - d
    given = jnp.where(d > 0, next_id + before, -1)
    # given ids only grow, so the current id is the latest one given (or the initial id)
    latest = _scan(jnp.maximum, given, 0)
    ids0 = ids0.reshape(1, -1)
    prev = jnp.concatenate([jnp.full_like(latest[:1], -1), latest[:-1]], axis=0)
    ids = jnp.maximum(ids0, prev).reshape(done.shape)
    last = jnp.maximum(ids0[0], latest[-1]).reshape(done.shape[1:])
    return ids, last, next_id + jnp.sum(d, dtype=jnp.int32)


def _step_counts(done: jax.Array, count0: jax.Array):
    """Steps since the last reset at every step of a time-major rollout, and after it."""
    T = done.shape[0]
    t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * (done.ndim - 1))
    # 1 + index of the latest done step up to t (0: none yet)
    latest = _scan(jnp.maximum, jnp.where(done, t + 1, 0), 0)
    prev = jnp.concatenate([jnp.zeros_like(latest[:1]), latest[:-1]], axis=0)
    counts = jnp.where(prev > 0, t - prev, count0 + t)
    last = jnp.where(latest[-1] > 0, T - latest[-1], count0 + T)
    return counts, last


SyncDataCollector = Collector
