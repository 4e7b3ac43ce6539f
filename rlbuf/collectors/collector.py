"""``Collector``: TorchRL's synchronous data collector as a pure, jittable function.

The pieces live in their own modules: the env protocol (``_env``), per-env parameter
inference (``_params``), policy calls and output checks (``_policy``), the rollout
(``_rollout``) and the counters with their limits (``_counters``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._counters import frames_limit, id_dtype
from rlbuf.collectors._env import EnvAdapter, strong
from rlbuf.collectors._params import collector_params
from rlbuf.collectors._policy import call_policy, check_action, check_carry, check_extras, init_carry
from rlbuf.collectors._rollout import rollout
from rlbuf.collectors._spaces import action_spec, has_action_space, plain_dicts, sample_action


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CollectorState:
    """Everything a :class:`Collector` carries between batches (a pytree; checkpointable).

    Env-indexed leaves have a leading ``[N]`` axis, ``N`` = number of envs (``W * B`` in
    worker-major order for :class:`MultiSyncCollector`); with ``num_envs=None`` there is no env
    axis. Counter dtypes and limits: :mod:`rlbuf.collectors._counters`.

    Attributes:
        env_state: the envs' states ``[N, ...]``.
        observation: the observation each env will act on next ``[N, ...]``.
        key: PRNG key for the next batch.
        traj_ids: ``[N]`` current trajectory id of each env (int32; int64 under x64).
        next_traj_id: ``[]`` the global counter: id given to the next env that resets.
        step_count: int32 ``[N]`` steps since each env's last reset (saturates at 2^31 - 1).
        episode_reward: float32 ``[N]`` return of each env's running episode so far.
        frames: ``[]`` frames collected so far, all envs (int64 under x64; else int32
            saturating at 2^31 - 1).
        policy_carry: the policy's carry (leaves ``[N, ...]``), None without ``policy_carry``.
    """

    env_state: Any
    observation: Any
    key: jax.Array
    traj_ids: jax.Array
    next_traj_id: jax.Array
    step_count: jax.Array
    episode_reward: jax.Array
    frames: jax.Array
    policy_carry: Any = None


def _positive_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0


@dataclasses.dataclass(frozen=True, eq=False)
class Collector:
    """Synchronous data collector (TorchRL's ``SyncDataCollector``) as pure functions.

    .. code-block:: python

        collector = Collector(env, policy, frames_per_batch=1024, num_envs=8)
        cstate = collector.init(key)
        cstate, batch = collector.collect(cstate, policy_params)   # jit/scan-safe

    ``collect`` is a ``lax.scan`` over ``T`` steps of ``num_envs`` vmapped envs; the collector is
    frozen and hashed by identity, so ``jax.jit(collector.collect)`` compiles once.

    Env protocol (:mod:`rlbuf.collectors._env`):
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
        ``init_random_frames``, and enables the policy-output checks. Optional hooks (used by
        the multi-agent :class:`rlbuf.envs.JaxMARLEnv`): ``batch_layout(step, info)`` (see
        :mod:`rlbuf.collectors._rollout`), ``random_action(key, observation, params)`` (one
        env's random action, e.g. within the observation's action masks) and
        ``check_action(action, lead)`` (the env's own trace-time check of the policy's actions,
        run before the generic one).

    Args:
        env: the environment (see above). Only its functions are used; parameters go in
            ``env_params``.
        policy: ``policy(params, observation, key) -> action`` or ``-> (action, extras)``, called
            once per step on all envs' observations (leading ``[B]`` axis; none when
            ``num_envs=None``). ``extras`` (a dict of arrays with leading dims ``[B]``, none
            for one env) is stored at the batch root; its keys may not be the collector's own
            root keys (``"observation"``, ``"action"``, ``"step_count"``, ``"next"``,
            ``"collector"``, ``"is_init"``): that, or an extra without the env batch as leading
            dims, raises at trace time naming the key. ``None``: uniform random actions from
            ``env.action_space``. With ``policy_carry``:
            ``policy(params, observation, key, carry) -> (action, extras, new_carry)``.
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
        policy_carry: ``init_fn(num_envs) -> carry``, a pytree of arrays with leading ``[B]``
            (no env axis when ``num_envs=None``): the policy's recurrent state. It lives in
            ``CollectorState.policy_carry`` across ``collect`` calls (so checkpoints hold it),
            and is reset to ``init_fn``'s value where an env starts an episode (after a done
            step, at ``reset_at_each_iter``). In random-action batches (``init_random_frames``)
            the policy is not called and the carry is not advanced.
        store_carry: with ``policy_carry``, store the carry the policy *received* at each step
            at ``("collector", "carry")`` (leaves ``[B, T, ...]``; R2D2's stored state).

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
        ``("collector","traj_ids")``: trajectory id (int32; int64 under ``jax_enable_x64``).
        Env ``i`` starts with ``i``; after each step, the envs that are done take the next ids
        of one global counter in env order. A trajectory spanning batches keeps its id. Ids
        are distinct among any 2^32 consecutive episodes (int32; see
        :mod:`rlbuf.collectors._counters` for every counter's limit).
        With ``policy_carry``: ``"is_init"`` bool, True at each trajectory's first step
        (TorchRL's ``InitTracker``), and with ``store_carry`` ``("collector","carry")``.
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
    policy_carry: Callable | None = None
    store_carry: bool = False

    def __post_init__(self):
        fpb, n = self.frames_per_batch, self.num_envs
        if not _positive_int(fpb):
            raise ValueError(f"frames_per_batch must be a positive int, got {fpb!r}")
        if n is not None and not _positive_int(n):
            raise ValueError(f"num_envs must be None or a positive int, got {n!r}")
        if fpb % self._num:
            raise ValueError(
                f"frames_per_batch={fpb} is not divisible by num_envs={self._num} "
                f"({fpb} % {self._num} = {fpb % self._num})"
            )
        if self._random_frames > frames_limit():
            raise ValueError(
                f"init_random_frames={self.init_random_frames} exceeds the frames counter's limit "
                f"{frames_limit()} (enable jax_enable_x64 for an int64 counter)"
            )
        if (self.policy is None or self._random_frames > 0) and not has_action_space(self.env):
            raise ValueError("random actions (policy=None or init_random_frames>0) need env.action_space")
        if self.policy_carry is not None and self.policy is None:
            raise ValueError("policy_carry needs a policy (policy=None takes random actions)")
        if self.store_carry and self.policy_carry is None:
            raise ValueError("store_carry=True needs policy_carry")
        self._action_spec  # noqa: B018 -- infers and checks env_params now, not at the first collect

    # ------------------------------------------------------------------ derived configuration
    @functools.cached_property
    def _num(self) -> int:
        return 1 if self.num_envs is None else int(self.num_envs)

    @functools.cached_property
    def _T(self) -> int:
        return self.frames_per_batch // self._num

    @functools.cached_property
    def _max_frames(self) -> int | None:
        mf = self.max_frames_per_traj
        return None if mf is None or mf <= 0 else int(mf)

    @functools.cached_property
    def _random_frames(self) -> int:
        return int(self.init_random_frames or 0)

    @functools.cached_property
    def _adapter(self) -> EnvAdapter:
        return EnvAdapter(self.env)

    @functools.cached_property
    def _resolved_params(self) -> tuple[Any, bool]:
        return collector_params(self.env, self.env_params, self.num_envs)

    @property
    def _params(self) -> Any:
        """Env params (``env.default_params`` when None), strong-typed; per-env: ``[N, ...]``."""
        return self._resolved_params[0]

    @property
    def _params_batched(self) -> bool:
        return self._resolved_params[1]

    @property
    def _pax(self):
        return 0 if self._params_batched else None

    @functools.cached_property
    def _action_spec(self):
        one = jax.tree.map(lambda x: x[0], self._params) if self._params_batched else self._params
        return action_spec(self.env, one)

    @property
    def _lead(self) -> tuple[int, ...]:
        return () if self.num_envs is None else (self._num,)

    # ------------------------------------------------------------------ env helpers
    def _env_map(self, fn, in_axes):
        """``vmap`` over envs; a single-env collector (``num_envs=None``) runs ``fn`` as is,
        without a size-1 env axis (cheaper per step, and its state has no env axis)."""
        return fn if self.num_envs is None else jax.vmap(fn, in_axes=in_axes)

    def _env_keys(self, key):
        return key if self.num_envs is None else jax.random.split(key, self._num)

    def _env_zeros(self, dtype):
        return jnp.zeros(self._lead, dtype)

    def _env_range(self, start):
        start = jnp.asarray(start, id_dtype())
        if self.num_envs is None:
            return start
        return start + jnp.arange(self._num, dtype=start.dtype)

    def _reset_all(self, key, params):
        obs, st = self._env_map(self._adapter.reset, (0, self._pax))(self._env_keys(key), params)
        return jax.tree.map(strong, obs), jax.tree.map(strong, st)

    # ------------------------------------------------------------------ policy helpers
    def _random_actions(self, key, params, obs=None):
        masked = getattr(self.env, "random_action", None)  # env-chosen (e.g. action masks in obs)
        if masked is not None:
            return self._env_map(masked, (0, 0, self._pax))(self._env_keys(key), obs, params)
        sample = lambda k, p: sample_action(self.env, k, p)  # noqa: E731
        return self._env_map(sample, (0, self._pax))(self._env_keys(key), params)

    def _carry0(self):
        """The initial carry ``policy_carry(num_envs)``, checked."""
        return init_carry(self.policy_carry, self.num_envs, self._lead)

    def _call_policy(self, policy_params, obs, key, carry=None):
        """One checked policy call: ``(action, extras, new_carry)``."""
        with_carry = self.policy_carry is not None
        action, extras, new_carry = call_policy(self.policy, policy_params, obs, key, carry, with_carry)
        env_check = getattr(self.env, "check_action", None)  # the env's own, clearer messages first
        if env_check is not None:
            env_check(action, self._lead)
        action = plain_dicts(action)  # as random actions are (one structure for both)
        check_action(action, self._action_spec, self._lead, self.num_envs)
        check_extras(extras, self._lead)
        if with_carry:
            check_carry(new_carry, carry)
        return action, extras, new_carry

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
            next_traj_id=jnp.asarray(self._num, id_dtype()),
            step_count=self._env_zeros(jnp.int32),
            episode_reward=self._env_zeros(jnp.float32),
            frames=jnp.zeros((), id_dtype()),
            policy_carry=None if self.policy_carry is None else self._carry0(),
        )

    def collect(self, state: CollectorState, policy_params: Any = None):
        """Collect one batch; returns ``(new_state, batch)`` (pure; safe under jit and scan)."""
        if self.reset_at_each_iter:
            state = self._reset_at_iter(state)
        if self.policy is None:
            state, traj = rollout(self, state, policy_params, random=True)
        elif self._random_frames > 0:
            state, traj = jax.lax.cond(
                state.frames < self._random_frames,
                lambda s, p: rollout(self, s, p, random=True),
                lambda s, p: rollout(self, s, p, random=False),
                state, policy_params,
            )
        else:
            state, traj = rollout(self, state, policy_params, random=False)
        batch = traj  # already in TorchRL's layout (time last): see _rollout
        if self.postproc is not None:
            batch = self.postproc(batch)
        return state, batch

    def _reset_at_iter(self, state: CollectorState) -> CollectorState:
        key, k_reset = jax.random.split(state.key)
        obs, st = self._reset_all(k_reset, self._params)
        fresh = state.frames > 0  # the first batch's envs are already fresh from init
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(fresh, x, y), a, b)  # noqa: E731
        carry = state.policy_carry
        if carry is not None:
            carry = pick(self._carry0(), carry)
        return dataclasses.replace(
            state,
            env_state=pick(st, state.env_state),
            observation=pick(obs, state.observation),
            key=key,
            traj_ids=jnp.where(fresh, self._env_range(state.next_traj_id), state.traj_ids),
            next_traj_id=state.next_traj_id + jnp.where(fresh, self._num, 0).astype(state.next_traj_id.dtype),
            step_count=jnp.where(fresh, 0, state.step_count),
            episode_reward=jnp.where(fresh, 0.0, state.episode_reward),
            policy_carry=carry,
        )


SyncDataCollector = Collector
