"""``HostCollector``: host environments (gymnasium vector envs, EnvPool) into rlbuf's batch layout.

The envs step on the host (Python, processes); the policy runs jitted on the device, once per
step for all envs of a group; each batch is assembled in host memory and moved to the device
once. Batches have exactly :class:`rlbuf.Collector`'s keys and semantics (``[B, T]`` time-last
leaves, true final observation, ``terminated``/``truncated`` apart, TorchRL's trajectory ids).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.collectors._host_env import (  # noqa: F401  (make_groups: public through this module)
    DISABLED,
    NEXT_STEP,
    SAME_STEP,
    PoisonedStateError,
    _alloc,
    _as_groups,
    _final_obs,
    _Group,
    _put,
    _tmap,
    batch_keys,
    check_action_dtype,
    check_action_values,
    finish_batch,
    make_groups,
)
from rlbuf.collectors._policy import call_policy, check_carry, check_extras, init_carry
from rlbuf.collectors._version import stamp_version
from rlbuf.collectors.options import OPTION_NAMES, CollectorOptions, with_option_keywords


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HostCollectorState:
    """What a :class:`HostCollector` carries between batches (a pytree of host/device arrays).

    It does *not* hold the envs' own states (they live in the vector env's memory or worker
    processes): a checkpoint of it keeps the key, counters, trajectory ids and the current
    observations, and resuming from a restored one continues ids and frame counts but not the
    episodes that were running (call :meth:`HostCollector.resume`).

    Attributes:
        observation: the observation each env will act on next, host arrays ``[B, ...]``.
        key: PRNG key of the policy (and of env seeds at resets of every env).
        traj_ids: int32 ``[B]`` current trajectory id of each env.
        next_traj_id: int32 ``[]`` the id given to the next env that resets.
        step_count: int32 ``[B]`` steps since each env's reset.
        episode_reward: float32 ``[B]`` running return of each env's episode.
        frames: int64 ``[]`` frames collected so far.
        policy_carry: the policy's carry (device leaves ``[B, ...]``), None without
            ``policy_carry``.
    """

    observation: Any
    key: jax.Array
    traj_ids: np.ndarray
    next_traj_id: np.ndarray
    step_count: np.ndarray
    episode_reward: np.ndarray
    frames: np.ndarray
    policy_carry: Any = None


class HostCollector:
    """TorchRL's ``SyncDataCollector`` over host environments: gymnasium vector envs or EnvPool.

        envs = gymnasium.make_vec("CartPole-v1", num_envs=8, vectorization_mode="async")
        hc = rlbuf.HostCollector(envs, policy, frames_per_batch=256)
        cstate = hc.init(key)
        cstate, batch = hc.collect(cstate, policy_params)   # device arrays [8, 32, ...]
        rb_state = rb.add(rb_state, batch)

    **Not jittable**: the envs are host state, stepped by ``collect`` in Python. ``collect``
    mutates them, so a state may be passed to ``collect`` only once (a stale one raises).
    Works with :func:`rlbuf.iterate`.

    Args:
        env: a ``gymnasium.vector.VectorEnv`` (``SyncVectorEnv``/``AsyncVectorEnv``, any
            ``autoreset_mode``: next-step, same-step or disabled), a callable returning one, a
            synchronous EnvPool pool (``envpool.make_gymnasium(name, num_envs=n)``, stepped with
            ``send``/``recv``, done envs reset by id; its seed is the one given to ``make``, not
            ``init``'s key), or a list of these: *groups* stepped
            alternately, so that while one group's (async) envs step, the policy runs on the
            other's observations (Sebulba / EnvPool-async style). Envs are numbered group after
            group.
        policy: ``policy(params, observation, key) -> action`` or ``-> (action, extras)``,
            jitted and called once per step on a group's observations (leading ``[B_g]`` axis).
            ``None``: random actions from the env's action space.
        frames_per_batch: frames per ``collect`` over all envs; ``T = frames_per_batch // B``.
        max_frames_per_traj, init_random_frames, reset_at_each_iter, postproc, policy_carry,
            store_carry: as :class:`rlbuf.Collector` (``postproc`` is applied to the device
            batch; with ``policy_carry=init_fn`` the policy is
            ``policy(params, obs, key, carry) -> (action, extras, new_carry)``, the carry stays
            on the device, an env starting an episode starts from ``init_fn``'s carry, batches
            hold ``"is_init"`` and, with ``store_carry``, ``("collector", "carry")``).

    Batch: exactly :class:`rlbuf.Collector`'s keys and semantics, leaves ``[B, T, ...]`` as
    device arrays. The next observation of a done step is the env's final observation (taken
    from ``info["final_obs"]`` in same-step mode; in next-step and disabled modes the envs that
    ended are reset right away with ``reset_mask``, so no step is ever a reset step).
    Trajectory ids: env ``i`` starts with ``i``; done envs take the next ids in env order.

    Checkpoints hold :class:`HostCollectorState` (key, counters, ids, current observations),
    never the envs' internal states: after a restore, :meth:`resume` resets the envs and
    starts new trajectories with fresh ids.
    """

    jittable = False

    @with_option_keywords
    def __init__(self, env: Any, policy: Callable | None = None, **options: Any):
        #: the shared options (:class:`rlbuf.collectors.options.CollectorOptions`), also read as
        #: attributes (``hc.frames_per_batch``, ``hc.store_carry``, ...)
        self.options = CollectorOptions(**options)
        if self.options.policy_carry is not None and policy is None:
            raise ValueError("policy_carry needs a policy (policy=None takes random actions)")
        self.groups = _as_groups(env)
        self.num_envs = sum(g.num for g in self.groups)
        fpb = self.options.frames_per_batch
        if fpb % self.num_envs:
            raise ValueError(f"frames_per_batch={fpb} is not divisible by the number of envs "
                             f"{self.num_envs} ({fpb} % {self.num_envs} = {fpb % self.num_envs})")
        self.T = int(fpb) // self.num_envs
        self.policy = policy
        self._policy_step = None if policy is None else jax.jit(self._policy_fn, static_argnames="impl")
        self._carry_reset = jax.jit(self._carry_reset_fn)
        self._finish = jax.jit(finish_batch, static_argnames=("with_carry", "layout"))
        # the env's batch_layout(step, info) hook (multi-agent groups), applied on the device
        self._layout = getattr(self.groups[0].vec, "batch_layout", None)
        self._keys = jax.jit(batch_keys, static_argnums=1)
        self._frames: int | None = None  # frames of the state the envs are in (stale-state check)
        self._extras_spec: Any = None
        self._failed: str | None = None  # why the envs are in an unknown state (a collect raised)
        self._touched = False  # the current collect has stepped or reset the envs

    def __getattr__(self, name: str) -> Any:
        # the options read as attributes (hc.frames_per_batch, ...), so none is declared twice
        if name in OPTION_NAMES and "options" in self.__dict__:
            return getattr(self.options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ policy on the device
    def _carry0(self, n: int):
        return init_carry(self.policy_carry, n, (n,))

    def _carry_reset_fn(self, carry, fresh):
        """The carry with the envs in ``fresh`` (bool ``[n]``) back at ``policy_carry``'s value."""
        n = fresh.shape[0]
        return jax.tree.map(lambda c0, c: jnp.where(fresh.reshape((n,) + (1,) * (c.ndim - 1)), c0, c),
                            self._carry0(n), carry)

    def _policy_fn(self, params, obs, key, carry=None, fresh=None, *, impl=None):
        """One policy step on a group: ``(action, extras, new_carry, carry_in)``. ``key`` is this
        call's key as host data (the batch's keys are split once, read back once, and each
        call gets its row: cheaper than a typed key in or out of every call), wrapped back
        into a typed key of ``impl`` unless the collector's key is a raw ``uint32`` one; the
        carry of envs that just started an episode (``fresh``) is reset before the call."""
        if impl is not None:
            key = jax.random.wrap_key_data(key, impl=impl)
        n = jax.tree.leaves(obs)[0].shape[0]
        with_carry = self.policy_carry is not None
        if with_carry:
            carry = self._carry_reset_fn(carry, fresh)
        action, extras, new_carry = call_policy(self.policy, params, obs, key, carry, with_carry)
        # trace-time checks: they raise before anything runs, naming the key or shape
        check_extras(extras, (n,))
        if with_carry:
            check_carry(new_carry, carry)
        return action, extras, new_carry, carry

    def _check_action(self, action, group: _Group):
        check = getattr(group.vec, "check_action", None)  # the env's own (pytree actions)
        if check is not None:
            return check(action, (group.num,))
        space = group.action_space
        want = (group.num,) + tuple(getattr(space, "shape", None) or ())
        if hasattr(space, "shape") and tuple(np.shape(action)) != want:
            raise ValueError(f"policy returned an action of shape {tuple(np.shape(action))}, expected "
                             f"{want} ({group.num} envs, action space {space})")

    # ------------------------------------------------------------------ public API
    @property
    def batch_shape(self) -> tuple[int, int]:
        return (self.num_envs, self.T)

    def init(self, key: jax.Array) -> HostCollectorState:
        """Reset every env (seeded from ``key``); returns the initial state."""
        key, k_seed = jax.random.split(key)
        obs = self._reset_groups(k_seed)
        B = self.num_envs
        self._frames = 0
        self._failed = None
        return HostCollectorState(
            observation=obs, key=key, traj_ids=np.arange(B, dtype=np.int32),
            next_traj_id=np.asarray(B, np.int32), step_count=np.zeros(B, np.int32),
            episode_reward=np.zeros(B, np.float32), frames=np.asarray(0, np.int64),
            policy_carry=None if self.policy_carry is None else self._carry0(B))

    def resume(self, state: HostCollectorState) -> HostCollectorState:
        """Continue from a restored state: the envs reset (their states were not saved) and
        start new trajectories with fresh ids; key and counters continue."""
        key, k_seed = jax.random.split(state.key)
        obs = self._reset_groups(k_seed)
        B = self.num_envs
        # the counter's own wrapping arithmetic, as Collector's (int32 past 2**31 - 1 wraps)
        nxt = np.asarray(state.next_traj_id).astype(np.int32)  # (HostCollectorState's dtype, whatever was given)
        with np.errstate(over="ignore"):
            ids = np.full(B, nxt, np.int32) + np.arange(B, dtype=np.int32)
            next_id = (np.reshape(nxt, (1,)) + np.asarray([B], np.int32))[0]
        self._frames = int(state.frames)
        self._failed = None
        return dataclasses.replace(
            state, observation=obs, key=key, traj_ids=ids,
            next_traj_id=np.asarray(next_id), step_count=np.zeros(B, np.int32),
            episode_reward=np.zeros(B, np.float32),
            policy_carry=None if self.policy_carry is None else self._carry0(B))

    def collect(self, state: HostCollectorState, policy_params: Any = None, *, policy_version: Any = None):
        """Step the envs ``T`` times; returns ``(new_state, batch)`` with device-array leaves
        ``[B, T, ...]``. Not jittable (see the class docstring). ``policy_version`` (an int)
        is stored at ``("collector", "policy_version")`` (int32 ``[B, T]``); None stores none.

        If it raises once the envs have been stepped or reset (an env failed), no state matches
        the envs any more: every later ``collect`` is refused until :meth:`init` (or
        :meth:`resume`) resets them, instead of storing pairs that are not transitions.
        """
        failed = getattr(self, "_failed", None)
        if failed is not None:
            raise PoisonedStateError(
                f"HostCollector.collect: an earlier call failed while the envs were stepping or resetting ({failed}); "
                "the envs are in an unknown state that no HostCollectorState matches, so collecting again "
                "would store pairs that are not transitions: call init(key) (or resume(state)) again first")
        if self._frames is None or int(state.frames) != self._frames:
            raise ValueError(
                f"HostCollector.collect got a state at frame {int(state.frames)} but its envs are at "
                f"frame {self._frames}: the envs live on the host, so each state can be used once "
                "(after a checkpoint restore, call resume(state) first)")
        self._touched = False
        try:
            return self._collect(state, policy_params, policy_version)
        except BaseException as e:
            if self._touched:  # (errors before any env call, e.g. a policy's at trace time, leave them as they were)
                self._failed = f"{type(e).__name__}: {e}"
                self._frames = None
            raise

    def _collect(self, state: HostCollectorState, policy_params: Any, policy_version: Any):
        if self.reset_at_each_iter and int(state.frames) > 0:
            self._touched = True
            state = self.resume(state)
        random = self.policy is None or int(state.frames) < self.options.random_frames
        host, extras, stored, obs, key, carry = self._rollout(state, policy_params, random)
        # one transfer per batch (the host buffers are arguments of one jitted call: cheaper than
        # device_put's per-leaf path); the counters (ids, step counts, returns) are computed from
        # the flags on the device, vectorized over the batch, instead of per step on the host
        batch, (ids, next_id, count, ret) = self._finish(
            host, extras, state.traj_ids, state.next_traj_id, state.step_count, state.episode_reward,
            with_carry=self.policy_carry is not None, layout=self._layout)
        state = HostCollectorState(
            observation=obs, key=key, traj_ids=np.asarray(ids), next_traj_id=np.asarray(next_id),
            step_count=np.asarray(count), episode_reward=np.asarray(ret),
            frames=np.asarray(int(state.frames) + self.frames_per_batch, np.int64), policy_carry=carry)
        if stored is not None:
            batch["collector"]["carry"] = stored
        batch = stamp_version(batch, policy_version, self.batch_shape)
        if self.postproc is not None:
            batch = self.postproc(batch)
        self._frames = int(state.frames)
        return state, batch

    def close(self):
        for g in self.groups:
            g.close()

    # ------------------------------------------------------------------ internals
    def _reset_groups(self, key):
        seeds = np.asarray(jax.random.randint(key, (len(self.groups),), 0, 2**31 - 1))
        try:
            obs = [g.reset_all(int(s)) for g, s in zip(self.groups, seeds)]
        except BaseException as e:  # some envs may be reset, others not: no state matches them
            self._failed, self._frames = f"{type(e).__name__}: {e}", None
            raise
        return self._cat(obs)

    def _cat(self, parts):
        return parts[0] if len(parts) == 1 else jax.tree.map(lambda *x: np.concatenate(x), *parts)

    def _policy_spec(self, params, obs, key):
        """(action, extras) shapes of the policy on one group's observations (traced once)."""
        if self._extras_spec is None:
            n = self.groups[0].num
            o = jax.tree.map(lambda x: np.asarray(x)[:n], obs)
            carry = None if self.policy_carry is None else jax.eval_shape(lambda: self._carry0(n))
            self._extras_spec = jax.eval_shape(
                lambda p, o, k, c, f: self._policy_fn(p, o, k, c, f)[:2], params, o, key, carry,
                jax.ShapeDtypeStruct((n,), bool))
        return self._extras_spec

    def _rollout(self, state, params, random):
        """Step every group ``T`` times. Returns the host buffers of the batch (observations,
        actions, rewards and flags, ``[B, T, ...]``), the policy extras and stored carries
        (device, ``[B, T, ...]``), and the next state's observations, key and policy carry.

        Per step and group the host does only what the next step needs: write the transition,
        reset the envs that ended, call the policy (the counters are computed once per batch,
        by ``_host_env.finish_batch``). The policy is dispatched as soon as a group's next
        observations are known and its action read back as late as possible, so that XLA runs
        it while the host writes the transition and, with several groups, while the other
        groups step.
        """
        groups, T, G = self.groups, self.T, len(self.groups)
        starts = [int(x) for x in np.cumsum([0] + [g.num for g in groups])]  # (python ints: faster slicing)
        mf = self.options.max_frames
        obs = [jax.tree.map(lambda x, a=a, b=b: np.asarray(x[a:b]), state.observation)
               for a, b in zip(starts[:-1], starts[1:])]
        key, keys, ex_spec = state.key, None, {}
        typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        impl = jax.random.key_impl(key) if typed else None
        if self.policy is not None:
            a_spec, ex_spec = self._policy_spec(params, state.observation, key)
            for g in groups:  # (also in random batches: the error comes at the first collect)
                if hasattr(a_spec, "dtype"):  # (a multi-agent env's action pytree: its check_action hook)
                    check_action_dtype(a_spec.dtype, g)
        # random actions are stored with the policy's dtype (as Collector does), so random and
        # policy batches go into one buffer
        act_dtype = (jax.tree.map(lambda s: s.dtype, a_spec) if self.policy is not None else jax.tree.map(
            lambda x: jax.dtypes.canonicalize_dtype(np.asarray(x).dtype), groups[0].random_actions()))
        if not random:  # one key per policy call, split once per batch
            key, keys = self._keys(key, T * G)
            keys = np.asarray(keys)
        with_carry = self.policy_carry is not None
        carry = [None] * G
        if with_carry:
            carry = [jax.tree.map(lambda x, a=a, b=b: x[a:b], state.policy_carry)
                     for a, b in zip(starts[:-1], starts[1:])]
        fresh = [np.zeros(g.num, bool) for g in groups]  # envs whose carry must restart
        extras, stored = [[] for _ in groups], [[] for _ in groups]
        checked = [False] * G
        count = None if mf is None else state.step_count.copy()

        def dispatch(gi, t):
            """Start the policy on group ``gi``'s observations for step ``t``: a device action (not
            waited for), or a host one when acting randomly."""
            g = groups[gi]
            if random:
                if with_carry and self.store_carry:  # the carry is not advanced, only reset
                    carry[gi] = self._carry_reset(carry[gi], fresh[gi])
                    fresh[gi] = np.zeros(g.num, bool)
                    stored[gi].append(carry[gi])
                return jax.tree.map(lambda x, d: np.asarray(x).astype(d, copy=False), g.random_actions(), act_dtype)
            a, ex, new_carry, carry_in = self._policy_step(params, obs[gi], keys[t * G + gi], carry[gi],
                                                           fresh[gi] if with_carry else None, impl=impl)
            extras[gi].append(ex)
            if with_carry:
                if self.store_carry:
                    stored[gi].append(carry_in)
                carry[gi], fresh[gi] = new_carry, np.zeros(g.num, bool)
            return a

        def launch(gi, a):
            """Wait for group ``gi``'s action and start its envs' step; returns the action."""
            a = _tmap(np.asarray, a)
            if not checked[gi]:
                self._check_action(a, groups[gi])
                checked[gi] = True
            dtype = env_dtype[gi]
            if hasattr(a, "dtype") and dtype is not None and a.dtype != dtype and not np.can_cast(a.dtype, dtype):
                check_action_values(a, groups[gi])
            self._touched = True
            groups[gi].step_async(a if dtype is None or not hasattr(a, "dtype") or a.dtype == dtype
                                  else a.astype(dtype))
            return a

        # a synchronous vector env steps inside step_wait, so its action is read back only then
        # (after the other groups' work); subprocess and EnvPool envs start stepping at once
        lazy = [not (g.async_ or g.envpool) for g in groups]
        env_dtype = [getattr(g.action_space, "dtype", None) for g in groups]
        pending = [dispatch(gi, 0) for gi in range(G)]
        actions = [None if lazy[gi] else launch(gi, pending[gi]) for gi in range(G)]
        buf = None
        for t in range(T):
            last = t + 1 == T
            for gi, g in enumerate(groups):
                a, b = starts[gi], starts[gi + 1]
                if lazy[gi]:
                    actions[gi] = launch(gi, pending[gi])
                nobs, rew, term, trunc, info = g.step_wait()
                ended = term | trunc  # by the env itself (it reset itself in same-step mode)
                any_ended = np.count_nonzero(ended)  # (faster than .any() on a few envs)
                if mf is None:
                    done, any_done = ended, any_ended
                else:  # (the host counts steps only to truncate here; the batch's counts come
                    # from the flags on the device, finish_batch)
                    c = count[a:b] + 1
                    trunc = trunc | (c >= mf)
                    done = term | trunc
                    count[a:b] = np.where(done, 0, c)
                    any_done = np.count_nonzero(done)
                nxt = nobs
                if any_ended and g.mode == SAME_STEP:
                    nxt = _tmap(np.array, nobs)  # own copy: the final observations go in
                    for i in np.nonzero(ended)[0]:
                        fin = _final_obs(info, i)
                        _tmap(lambda n, f, i=i: n.__setitem__(i, f), nxt, fin)
                cur = obs[gi]
                if any_done:
                    # the observation acted on next: reset ones where an episode ended (a
                    # same-step env already reset itself unless only max_frames_per_traj ended it)
                    need = done & ~ended if g.mode == SAME_STEP else done
                    if np.count_nonzero(need):
                        nobs = g.reset_some(need, nobs)
                    if with_carry:
                        fresh[gi] = fresh[gi] | done
                obs[gi] = nobs
                if not last:
                    pending[gi] = dispatch(gi, t + 1)
                if buf is None:
                    buf = _alloc(cur, actions[gi], self.num_envs, T)
                    if self._layout is not None:  # the env's info is the hook's input: stored per step
                        buf["info"] = _alloc(info, info, self.num_envs, T)["observation"]
                _put(buf["observation"], a, b, t, cur)
                _put(buf["next"]["observation"], a, b, t, nxt)
                _put(buf["action"], a, b, t, actions[gi])
                if self._layout is not None:
                    _put(buf["info"], a, b, t, info)
                n = buf["next"]
                n["reward"][a:b, t], n["terminated"][a:b, t], n["truncated"][a:b, t] = rew, term, trunc
                if not last and not lazy[gi]:
                    actions[gi] = launch(gi, pending[gi])
        ex = {}
        if random and ex_spec:  # TorchRL: policy extras are zeros in random batches
            ex = jax.tree.map(lambda sp: np.zeros((self.num_envs, T) + sp.shape[1:], sp.dtype), ex_spec)
        elif extras[0] and extras[0][0]:
            # [T] lists of [B_g, ...] per group -> host [B, T, ...], moved with the batch: the
            # extras are long computed, so reading them back costs less than one device stack of
            # T arrays (or a read per step)
            per_group = [jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs], axis=1), *e)
                         for e in extras]
            ex = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *per_group)
        final_carry = st = None
        if with_carry:  # the state's carry is already reset where an episode just ended
            parts = [self._carry_reset(c, f) for c, f in zip(carry, fresh)]
            final_carry = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
            if self.store_carry:
                per_group = [jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *c) for c in stored]
                st = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *per_group)
        return buf, ex, st, self._cat(obs), key, final_carry


__all__: Sequence[str] = ("HostCollector", "HostCollectorState", "make_groups")
