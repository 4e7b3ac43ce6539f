"""JaxMARL multi-agent envs (MPE, SMAX, Overcooked, ...) for rlbuf's jitted collectors, in
TorchRL's MARL layout.

:class:`JaxMARLEnv` wraps any JaxMARL ``MultiAgentEnv`` (or an object with the same
``agents``, ``reset(key)``, ``step_env(key, state, actions)``, ``action_space(agent)`` and,
optionally, ``get_avail_actions(state)``) as a gymnax-protocol env whose observations,
actions and rewards are grouped (:mod:`rlbuf.envs._marl`). The collectors drive it like any
other suite: ``step_env`` without JaxMARL's auto-reset (so the stored next observation at an
episode's last step is its true final one), a fresh reset where the episode's ``__all__`` is
True, and the adapter's ``batch_layout`` puts each collected step in TorchRL's layout
(``(g, "observation")``, ``("next", g, "reward")``, ... ``[B, T, A_g, ...]``).

Truncation vs termination: JaxMARL folds its time limit into ``dones["__all__"]``. The adapter
counts steps since the reset itself; an episode that ends (``__all__``) after at least
``time_limit`` steps is *truncated*, any other end *terminated*. ``time_limit`` defaults to the
env's ``max_steps`` (MPE: 25, whose episodes end after 26 steps: always truncated, as MPE has
no other end; SMAX: a battle won or lost before step ``max_steps`` is terminated). A battle
decided exactly on the limit's step is reported truncated (JaxMARL does not say which).
``max_steps_in_episode`` adds an adapter time limit (truncation) as for the other suites.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlbuf.envs._adapter import SuiteEnv, SuiteState
from rlbuf.envs._marl import check_group_actions, marl_layout, resolve_groups


class GroupSpace:
    """The actions (or observations) of one group: its agents' common space stacked over the
    group's ``A_g`` agents. ``shape = (A_g, *agent_space.shape)``; ``n`` (discrete spaces),
    ``low``/``high`` (boxes) are the agent space's."""

    def __init__(self, agent_space: Any, num_agents: int):
        self.agent_space = agent_space
        self.num_agents = int(num_agents)
        self.shape = (self.num_agents,) + tuple(getattr(agent_space, "shape", ()) or ())
        self.dtype = jnp.dtype(getattr(agent_space, "dtype", jnp.float32))
        for attr in ("n", "low", "high", "num_categories"):
            if hasattr(agent_space, attr):
                setattr(self, attr, getattr(agent_space, attr))

    def sample(self, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, self.num_agents)
        return jax.vmap(self.agent_space.sample)(keys).astype(self.dtype)

    def __repr__(self) -> str:
        return f"GroupSpace({self.agent_space!r} x {self.num_agents})"


class DictSpace:
    """``{group: space}``; ``sample`` returns a plain dict (the policy's action structure)."""

    def __init__(self, spaces: Mapping[str, Any]):
        self.spaces = dict(spaces)

    def sample(self, key: jax.Array) -> dict:
        keys = jax.random.split(key, len(self.spaces))
        return {g: s.sample(k) for (g, s), k in zip(self.spaces.items(), keys)}

    def __getitem__(self, g: str) -> Any:
        return self.spaces[g]

    def __repr__(self) -> str:
        return f"DictSpace({self.spaces!r})"


def _space_signature(space: Any) -> tuple:
    def val(x):
        return None if x is None else tuple(np.ravel(np.asarray(x)).tolist())

    return (type(space).__name__, tuple(getattr(space, "shape", ()) or ()), str(getattr(space, "dtype", "")),
            val(getattr(space, "n", None)), val(getattr(space, "num_categories", None)),
            val(getattr(space, "low", None)), val(getattr(space, "high", None)))


def masked_sample(key: jax.Array, mask: jax.Array, dtype) -> jax.Array:
    """Uniform random actions among the allowed ones (``mask`` bool ``[..., n]``); action 0
    where nothing is allowed."""
    logits = jnp.where(mask, 0.0, -jnp.inf)
    a = jax.random.categorical(key, jnp.where(jnp.any(mask, -1, keepdims=True), logits, 0.0))
    return jnp.where(jnp.any(mask, -1), a, 0).astype(dtype)


class JaxMARLEnv(SuiteEnv):
    """A JaxMARL multi-agent env with rlbuf's env protocol and TorchRL's MARL layout.


        env, env_params = rlbuf.envs.make("jaxmarl:MPE_simple_spread_v3")
        collector = rlbuf.Collector(env, policy, frames_per_batch=256, num_envs=8,
                                    env_params=env_params)
        # batch[("agents", "observation")]: [8, 32, 3, 18]; batch["next"]["agents"]["reward"]: [8, 32, 3]

    Args:
        env: a JaxMARL ``MultiAgentEnv`` (``jaxmarl.make(name)``), without JaxMARL's wrappers
            that batch or log (the collector vmaps and resets).
        group_map: ``None`` (one group ``"agents"`` when all agents share observation and
            action spaces, else one group per agent class: the name before the last ``_``, so
            ``adversary_0, agent_0, agent_1`` give ``"adversary"`` and ``"agent"``),
            ``"per_agent"`` (one group per agent, named after it) or ``{group: [agent names]}``
            naming every agent exactly once (the agents of a group must share spaces).
        max_steps_in_episode: an adapter time limit in steps (truncation); None: JaxMARL's own.
        time_limit: ``"auto"`` (the env's ``max_steps``), an int, or None (every end is a
            termination): an episode ending after at least this many steps is truncated (see
            the module docstring).

    Policy: receives ``{g: {"observation": [B, A_g, ...], "action_mask": bool [B, A_g, n]}}``
    (the mask only when the env has ``get_avail_actions``; plus non-agent observations such
    as SMAX's ``"world_state"`` ``[B, ...]`` at the root) and returns ``{g: action [B, A_g,
    ...]}`` (and extras). A wrong group or agent name, shape or dtype raises at trace time
    naming the group. An action the mask forbids is passed to the env as it is (TorchRL's
    behaviour; JaxMARL's SMAX then ignores it); random actions (``policy=None``,
    ``init_random_frames``) respect the masks.

    Spaces: ``env.groups`` is ``{group: (agent names, ...)}`` (the order of each agent axis);
    ``env.action_space().spaces[g]`` a :class:`GroupSpace` (``shape = (A_g, ...)``, ``n`` for
    discrete actions, ``dtype``); ``env.observation_space()[g]`` the group's agent
    observation space; ``env.unwrapped`` the JaxMARL env.

    Env-level values: the step's reward (and so ``("next", "reward")`` and the collector's
    ``("next", "episode_reward")``) is the sum of all agents' rewards; ``("next", g,
    "episode_reward")`` ``[B, T, A_g]`` is each agent's own running return.
    """

    suite = "jaxmarl"

    def __init__(self, env: Any, group_map: str | Mapping[str, Sequence[str]] | None = None, *,
                 max_steps_in_episode: int | None = None, time_limit: int | str | None = "auto"):
        super().__init__(env, max_steps_in_episode)
        for attr in ("agents", "reset", "step_env", "action_space"):
            if not hasattr(env, attr):
                raise TypeError(f"JaxMARLEnv needs a JaxMARL MultiAgentEnv (no {attr!r} on {type(env).__name__})")
        if getattr(env, "_env", None) is not None and type(env).__name__.endswith("Wrapper"):
            raise ValueError(f"JaxMARLEnv needs the raw env, got a {type(env).__name__}: rlbuf's collectors "
                             "batch, reset and log themselves")
        self.agents = tuple(env.agents)
        if time_limit == "auto":
            time_limit = getattr(env, "max_steps", None)
        self.time_limit = None if time_limit is None else int(time_limit)
        obs, state = jax.eval_shape(env.reset, jax.random.key(0))
        missing = [a for a in self.agents if a not in obs]
        if missing:
            raise ValueError(f"{type(env).__name__}.reset returned no observation for agents {missing}")
        self._extra_obs = tuple(k for k in obs if k not in self.agents)
        self._masks = self._avail_spec(state)
        agent_obs = {a: obs[a] for a in self.agents}

        def signature(a):
            o = agent_obs[a]
            m = None if self._masks is None else tuple(self._masks[a].shape)
            return (tuple(o.shape), str(o.dtype), _space_signature(env.action_space(a)), m)

        self.group_map = resolve_groups(self.agents, signature, group_map)
        for k in self._extra_obs:
            if k in self.group_map:
                raise ValueError(f"group {k!r} has the name of one of the env's non-agent observations")
        self._spaces = DictSpace({g: GroupSpace(env.action_space(names[0]), len(names))
                                  for g, names in self.group_map.items()})

    # ------------------------------------------------------------------ helpers
    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """``{group: (agent names, ...)}``, the order of every per-group agent axis."""
        return dict(self.group_map)

    def _avail_spec(self, state):
        fn = getattr(self._env, "get_avail_actions", None)
        if fn is None:
            return None
        try:
            return jax.eval_shape(fn, state)
        except NotImplementedError:
            return None

    def _group_obs(self, obs: dict, inner: Any) -> dict:
        masks = None if self._masks is None else self._env.get_avail_actions(inner)
        out = {}
        for g, names in self.group_map.items():
            out[g] = {"observation": jnp.stack([jnp.asarray(obs[a]) for a in names])}
            if masks is not None:
                out[g]["action_mask"] = jnp.stack([jnp.asarray(masks[a]) for a in names]).astype(bool)
        for k in self._extra_obs:
            out[k] = obs[k]
        return out

    def _per_group(self, d: Mapping[str, Any], dtype, default: Any) -> dict:
        """Per-agent values stacked per group (an agent the env leaves out gets ``default``)."""
        return {g: jnp.stack([jnp.asarray(d.get(a, default)).astype(dtype) for a in names])
                for g, names in self.group_map.items()}

    # ------------------------------------------------------------------ gymnax protocol
    def reset_env(self, key: jax.Array, params: Any):
        obs, inner = self._env.reset(key)
        zeros = {g: jnp.zeros((len(n),), bool) for g, n in self.group_map.items()}
        state = SuiteState(time=jnp.zeros((), jnp.int32), truncated=jnp.zeros((), bool),
                           inner={"env": inner, "agent_done": zeros,
                                  "agent_return": jax.tree.map(lambda z: z.astype(jnp.float32), zeros)})
        return self._group_obs(obs, inner), state

    def step_env(self, key: jax.Array, state: SuiteState, action: Any, params: Any):
        check_group_actions(action, self.group_map, self._spaces.spaces, ())
        actions = {a: action[g][i] for g, names in self.group_map.items() for i, a in enumerate(names)}
        obs, inner, rewards, dones, _ = self._env.step_env(key, state.inner["env"], actions)
        time = state.time + 1
        all_done = jnp.asarray(dones["__all__"], bool)
        trunc = jnp.zeros((), bool) if self.time_limit is None else all_done & (time >= self.time_limit)
        reward = self._per_group(rewards, jnp.float32, 0.0)
        done_now = self._per_group(dones, bool, all_done)
        before = state.inner["agent_done"]
        ret = jax.tree.map(jnp.add, state.inner["agent_return"], reward)
        new = SuiteState(time=time, truncated=trunc,
                         inner={"env": inner, "agent_done": jax.tree.map(jnp.logical_or, before, done_now),
                                "agent_return": ret})
        info = {"agents": {g: {"reward": reward[g], "done_now": done_now[g], "done_before": before[g],
                               "episode_reward": ret[g]} for g in self.group_map}}
        team = sum(jnp.sum(r) for r in reward.values())
        return self._group_obs(obs, inner), new, team, all_done & ~trunc, info

    def action_space(self, params: Any = None) -> DictSpace:
        """``{group: GroupSpace}`` (``shape = (A_g, ...)``; ``n`` for discrete actions)."""
        return self._spaces

    def observation_space(self, params: Any = None) -> dict:
        """``{group: agent observation space}`` (JaxMARL's, of the group's first agent)."""
        return {g: self._env.observation_space(names[0]) for g, names in self.group_map.items()}

    # ------------------------------------------------------------------ collector hooks
    def check_action(self, action: Any, lead: tuple[int, ...]) -> None:
        """Trace-time check of a policy's actions (leading env dims ``lead``)."""
        check_group_actions(action, self.group_map, self._spaces.spaces, tuple(lead))

    def random_action(self, key: jax.Array, observation: Any, params: Any = None) -> dict:
        """Uniform random actions of one env, among the allowed ones where there are masks."""
        keys = jax.random.split(key, len(self.group_map))
        out = {}
        for (g, space), k in zip(self._spaces.spaces.items(), keys):
            mask = observation[g].get("action_mask") if isinstance(observation[g], Mapping) else None
            out[g] = space.sample(k) if mask is None else masked_sample(k, mask, space.dtype)
        return out

    def batch_layout(self, step: dict, info: Any) -> dict:
        """One collected step in TorchRL's MARL layout (:func:`rlbuf.envs._marl.marl_layout`)."""
        return marl_layout(step, info, self.group_map)

    @property
    def name(self) -> str:
        return f"jaxmarl:{getattr(self._env, 'name', type(self._env).__name__)}"

    @property
    def num_actions(self) -> int:
        return 0


def make_jaxmarl(name: str, *, group_map=None, max_steps_in_episode: int | None = None,
                 time_limit: int | str | None = "auto", **kwargs) -> JaxMARLEnv:
    """``jaxmarl.make(name, **kwargs)`` as a :class:`JaxMARLEnv`; an unknown name raises listing
    JaxMARL's registered envs."""
    import jaxmarl
    from jaxmarl.registration import registered_envs

    if name not in registered_envs:
        raise ValueError(f"unknown JaxMARL env {name!r}; registered: {sorted(registered_envs)}")
    return JaxMARLEnv(jaxmarl.make(name, **kwargs), group_map, max_steps_in_episode=max_steps_in_episode,
                      time_limit=time_limit)
