"""``Collector``: TorchRL's synchronous data collector as a pure, jittable function.

The pieces live in their own modules: the env protocol (``_env``), per-env parameter
inference (``_params``), policy calls and output checks (``_policy``), the rollout
(``_rollout``, driven by an explicit :class:`~rlbuf.collectors._rollout.RolloutSpec`), the
counters with their limits (``_counters``) and the shared options (``options``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlbuf._eager import compiled_when_eager
from rlbuf.collectors._counters import id_dtype
from rlbuf.collectors._env import EnvAdapter
from rlbuf.collectors._groups import CollectorGroups
from rlbuf.collectors._params import collector_params, group_params
from rlbuf.collectors._policy import call_policy, check_action, check_carry, check_extras, init_carry
from rlbuf.collectors._rollout import RolloutSpec, rollout
from rlbuf.collectors._spaces import action_spec, has_action_space, plain_dicts, sample_action
from rlbuf.collectors._version import stamp_version
from rlbuf.collectors.options import CollectorOptions, positive_int


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


@dataclasses.dataclass(frozen=True, eq=False)
class Collector(CollectorOptions):
    """Synchronous data collector (TorchRL's ``SyncDataCollector``) as pure functions.

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
        max_frames_per_traj, init_random_frames, reset_at_each_iter, postproc, policy_carry,
            store_carry: the shared options, :class:`rlbuf.collectors.options.CollectorOptions`
            (the collector extends it; ``collector.options`` is the plain options object).
            Here: ``init_random_frames`` batches store zeros for the policy's extras;
            ``policy_carry`` lives in ``CollectorState.policy_carry`` across ``collect`` calls (so
            checkpoints hold it), is not advanced in random-action batches, and
            ``store_carry`` stores it at ``("collector", "carry")`` (leaves ``[B, T, ...]``,
            R2D2's stored state).

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
    env_params: Any = None
    num_envs: int | None = None

    # a collector is hashed by identity (jit caches on it), not by its options' values
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    jittable = True  # rlbuf.CollectorLike: init/collect are pure JAX functions

    def __post_init__(self):
        super().__post_init__()
        fpb, n = self.frames_per_batch, self.num_envs
        if n is not None and not positive_int(n):
            raise ValueError(f"num_envs must be None or a positive int, got {n!r}")
        num = 1 if n is None else int(n)
        if fpb % num:
            raise ValueError(
                f"frames_per_batch={fpb} is not divisible by num_envs={num} ({fpb} % {num} = {fpb % num})"
            )
        if (self.policy is None or self.random_frames > 0) and not has_action_space(self.env):
            raise ValueError("random actions (policy=None or init_random_frames>0) need env.action_space")
        if self.policy_carry is not None and self.policy is None:
            raise ValueError("policy_carry needs a policy (policy=None takes random actions)")
        self._action_spec  # noqa: B018 -- infers and checks env_params now, not at the first collect

    # ------------------------------------------------------------------ derived configuration
    @functools.cached_property
    def _spec(self) -> RolloutSpec:
        """What the rollout needs (env params resolved once: ``env.default_params`` when None,
        strong-typed; per-env ``[N, ...]``)."""
        params, batched = collector_params(self.env, self.env_params, self.num_envs)
        num = 1 if self.num_envs is None else int(self.num_envs)
        lead = () if self.num_envs is None else (num,)
        carry0 = None
        if self.policy_carry is not None:
            carry0 = functools.partial(init_carry, self.policy_carry, self.num_envs, lead)
        spec = RolloutSpec(adapter=EnvAdapter(self.env), env_params=params, params_batched=batched,
                           num_envs=self.num_envs, T=self.frames_per_batch // num, options=self.options,
                           act=None if self.policy is None else self._call_policy, random_act=self._random_actions,
                           carry0=carry0)
        return spec

    @functools.cached_property
    def _action_spec(self):
        s = self._spec
        one = jax.tree.map(lambda x: x[0], s.env_params) if s.params_batched else s.env_params
        return action_spec(self.env, one)

    def _random_actions(self, key, params, obs=None):
        masked = getattr(self.env, "random_action", None)  # env-chosen (e.g. action masks in obs)
        if masked is not None:
            return self._spec.env_map(masked, (0, 0, self._spec.pax))(self._spec.env_keys(key), obs, params)
        sample = lambda k, p: sample_action(self.env, k, p)  # noqa: E731
        return self._spec.env_map(sample, (0, self._spec.pax))(self._spec.env_keys(key), params)

    def _call_policy(self, policy_params, obs, key, carry=None):
        """One checked policy call: ``(action, extras, new_carry)``."""
        with_carry = self.policy_carry is not None
        action, extras, new_carry = call_policy(self.policy, policy_params, obs, key, carry, with_carry)
        env_check = getattr(self.env, "check_action", None)  # the env's own, clearer messages first
        if env_check is not None:
            env_check(action, self._spec.lead)
        action = plain_dicts(action)  # as random actions are (one structure for both)
        check_action(action, self._action_spec, self._spec.lead, self.num_envs)
        check_extras(extras, self._spec.lead)
        if with_carry:
            check_carry(new_carry, carry)
        return action, extras, new_carry

    # ------------------------------------------------------------------ public API
    @property
    def per_env_params(self) -> Any:
        """The env params as resolved, one set per env (leaves ``[num_envs, ...]``), or None
        when all envs share one set."""
        s = self._spec
        return s.env_params if s.params_batched else None

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch dims of every leaf of a batch: ``(T,)`` or ``(B, T)``."""
        s = self._spec
        return (s.T,) if self.num_envs is None else (s.num, s.T)

    @compiled_when_eager
    def init(self, key: jax.Array) -> CollectorState:
        """Reset every env; returns the initial :class:`CollectorState` (jittable). Called
        eagerly it runs as one jitted program (``rlbuf._eager``), not primitive by primitive:
        a first ``init`` of 8 Brax ``ant`` envs took 27 s of CPU op by op, 6.8 s compiled."""
        s = self._spec
        key, k_reset = jax.random.split(key)
        obs, st = s.reset_all(k_reset)
        return CollectorState(
            env_state=st,
            observation=obs,
            key=key,
            traj_ids=s.env_range(0),
            next_traj_id=jnp.asarray(s.num, id_dtype()),
            step_count=jnp.zeros(s.lead, jnp.int32),
            episode_reward=jnp.zeros(s.lead, jnp.float32),
            frames=jnp.zeros((), id_dtype()),
            policy_carry=None if s.carry0 is None else s.carry0(),
        )

    def collect(self, state: CollectorState, policy_params: Any = None, *, policy_version: Any = None):
        """Collect one batch; returns ``(new_state, batch)`` (pure; safe under jit and scan).

        Args:
            state: the state from :meth:`init` or the previous ``collect``.
            policy_params: the policy's parameters.
            policy_version: an int scalar (traced under jit: changing it does not recompile)
                stored at ``("collector", "policy_version")`` (int32 ``batch_shape``); None
                stores nothing.
        """
        spec = self._spec
        if self.reset_at_each_iter:
            state = self._reset_at_iter(state)
        if self.policy is None:
            state, batch = rollout(spec, state, policy_params, random=True)
        elif self.random_frames > 0:
            state, batch = jax.lax.cond(
                state.frames < self.random_frames,
                lambda s, p: rollout(spec, s, p, random=True),
                lambda s, p: rollout(spec, s, p, random=False),
                state, policy_params,
            )
        else:
            state, batch = rollout(spec, state, policy_params, random=False)
        batch = stamp_version(batch, policy_version, self.batch_shape)
        if self.postproc is not None:
            batch = self.postproc(batch)
        return state, batch

    def split(self, n_groups: int, who: str = "Collector.split") -> CollectorGroups:
        """The envs in ``n_groups`` groups of ``num_envs / n_groups`` (``rlbuf.shard_collector``):
        each group a ``Collector`` of its envs with ``frames_per_batch`` and
        ``init_random_frames`` divided by ``n_groups`` and no ``postproc`` (the caller applies
        it to the whole batch)."""
        G = n_groups
        if self.num_envs is None or self.num_envs % G:
            raise ValueError(
                f"{who}: num_envs={self.num_envs} must be an int divisible by {G} groups (a single env cannot be split)"
            )
        N = int(self.num_envs)
        flat = self.per_env_params
        grouped = None if flat is None else group_params(flat, G, (N // G,))
        irf = math.ceil(self.random_frames / G)

        def make(p):
            return dataclasses.replace(self, frames_per_batch=self.frames_per_batch // G, num_envs=N // G,
                                       env_params=p, init_random_frames=irf, postproc=None)

        first = self.env_params if grouped is None else jax.tree_util.tree_map(lambda x: x[0], grouped)
        return CollectorGroups(self, make(first), N // G, G, grouped, make, self.postproc)

    def _reset_at_iter(self, state: CollectorState) -> CollectorState:
        s = self._spec
        key, k_reset = jax.random.split(state.key)
        obs, st = s.reset_all(k_reset)
        fresh = state.frames > 0  # the first batch's envs are already fresh from init
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(fresh, x, y), a, b)  # noqa: E731
        carry = state.policy_carry
        if carry is not None and s.carry0 is not None:  # carry0 is set iff the policy has a carry
            carry = pick(s.carry0(), carry)
        return dataclasses.replace(
            state,
            env_state=pick(st, state.env_state),
            observation=pick(obs, state.observation),
            key=key,
            traj_ids=jnp.where(fresh, s.env_range(state.next_traj_id), state.traj_ids),
            next_traj_id=state.next_traj_id + jnp.where(fresh, s.num, 0).astype(state.next_traj_id.dtype),
            step_count=jnp.where(fresh, 0, state.step_count),
            episode_reward=jnp.where(fresh, 0.0, state.episode_reward),
            policy_carry=carry,
        )


SyncDataCollector = Collector
