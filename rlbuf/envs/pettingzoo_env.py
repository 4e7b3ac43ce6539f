"""PettingZoo ``ParallelEnv``s on the host, for :class:`rlbuf.HostCollector`, in TorchRL's MARL
layout (the same groups and keys as :class:`rlbuf.envs.JaxMARLEnv`).

:class:`PettingZooEnvs` holds ``B`` parallel envs and looks like a gymnasium vector env to the
collector (``num_envs``, ``reset(seed=..., options={"reset_mask": m})``, ``step(actions)``,
autoreset mode ``"disabled"``: the collector resets exactly the envs whose episode ended, so the
stored next observation at a done step is the final one).

Agents that leave the episode early (PettingZoo removes them from ``env.agents``) are handled
as TorchRL's ``PettingZooWrapper(use_mask=True)`` does: their entries stay in the group arrays
with ``(g, "mask")`` False (the agent is no longer in ``env.agents``; its final observation is
kept at the step it finished, zeros after), zero reward and an all-False action mask, no
action sent to the env, and their own ``done`` True from then on. The episode ends when no
agent is left (or every remaining agent is done): truncated if any agent was truncated at that step, else terminated.
Action masks come from the observation (``{"observation", "action_mask"}`` dicts, as in
``pettingzoo.classic``) or from ``infos[agent]["action_mask"]``; masked agents' masks are all
False.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from rlbuf.envs._marl import check_group_actions, marl_layout, resolve_groups


def _space_signature(space: Any) -> tuple:
    def val(x):
        return None if x is None else tuple(np.ravel(np.asarray(x)).tolist())

    return (type(space).__name__, tuple(getattr(space, "shape", ()) or ()), str(getattr(space, "dtype", "")),
            val(getattr(space, "n", None)), val(getattr(space, "nvec", None)),
            val(getattr(space, "low", None)), val(getattr(space, "high", None)))


def _canon(dtype) -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


class _GroupActions:
    """The batched action space ``{g: [B, A_g, ...]}``: ``sample()`` draws uniform random actions,
    within the current action masks (discrete actions), for the agents of every env."""

    def __init__(self, owner: "PettingZooEnvs"):
        self._owner = owner
        self._rng = np.random.default_rng()

    def seed(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)
        return [seed]

    def sample(self) -> dict:
        o = self._owner
        out = {}
        for g, names in o.group_map.items():
            space = o._act_spaces[g]
            mask = o._mask.get(g)
            if mask is not None:  # uniform among allowed actions (action 0 if none is)
                u = self._rng.random(mask.shape) * mask
                a = np.where(mask.any(-1), u.argmax(-1), 0)
            elif hasattr(space, "n"):
                a = self._rng.integers(0, int(space.n), (o.num_envs, len(names)))
            else:
                a = np.stack([[space.sample() for _ in names] for _ in range(o.num_envs)])
            out[g] = a.astype(o.action_dtypes[g])
        return out


class PettingZooEnvs:
    """``B`` PettingZoo ``ParallelEnv``s as one host vector env for :class:`rlbuf.HostCollector`.


        envs = rlbuf.envs.PettingZooEnvs([lambda: rps_v2.parallel_env(max_cycles=25)] * 8)
        hc = rlbuf.HostCollector(envs, policy, frames_per_batch=256)
        # batch[("agents", "observation")]: [8, 32, 2]; batch["next"]["agents"]["done"]: [8, 32, 2]

    Args:
        make_envs: ``B`` callables each returning a ``ParallelEnv`` (or the envs themselves).
        group_map: as :class:`rlbuf.envs.JaxMARLEnv` (``None``: one group ``"agents"`` when all
            of ``possible_agents`` share spaces, else one per agent class; ``"per_agent"``;
            ``{group: [agent names]}``).

    Batch keys (leaves ``[B, T, A_g, ...]`` for group ``g``): ``(g, "observation")``,
    ``(g, "mask")`` (the agent is in the episode), ``(g, "action_mask")`` (when the env has
    masks), ``(g, "action")``, ``("next", g, "observation" | "mask" | "action_mask" | "reward" |
    "done" | "terminated" | "truncated" | "episode_reward")``; the episode's ``("next",
    "reward")`` (sum over agents) and flags ``[B, T]`` as for every collector.
    """

    metadata = {"autoreset_mode": "disabled"}

    def __init__(self, make_envs: Sequence[Callable[[], Any] | Any],
                 group_map: str | Mapping[str, Sequence[str]] | None = None):
        self.envs = [e() if isinstance(e, type) or (callable(e) and not hasattr(e, "step")) else e
                     for e in make_envs]
        if not self.envs:
            raise ValueError("PettingZooEnvs needs at least one env")
        self.num_envs = len(self.envs)
        env = self.envs[0]
        self.agents = tuple(env.possible_agents)
        for e in self.envs[1:]:
            if tuple(e.possible_agents) != self.agents:
                raise ValueError(f"all envs must have the same possible_agents, got {self.agents} and "
                                 f"{tuple(e.possible_agents)}")

        def signature(a):
            return (_space_signature(env.observation_space(a)), _space_signature(env.action_space(a)))

        self.group_map = resolve_groups(self.agents, signature, group_map)
        self._index = {a: (g, i) for g, names in self.group_map.items() for i, a in enumerate(names)}
        self._act_spaces = {g: env.action_space(names[0]) for g, names in self.group_map.items()}
        self.action_dtypes = {g: _canon(getattr(s, "dtype", None) or np.float32) for g, s in self._act_spaces.items()}
        self.action_shapes = {g: (len(names),) + tuple(getattr(self._act_spaces[g], "shape", ()) or ())
                              for g, names in self.group_map.items()}
        self.single_action_space = self.action_space = _GroupActions(self)
        self._has_mask: bool | None = None  # decided at the first reset (None: not reset yet)
        self._mask: dict[str, np.ndarray] = {}
        self._obs: dict[str, dict[str, np.ndarray]] = {}  # {g: {key: [B, A_g, ...]}}, allocated at the first reset
        self._active: dict[str, np.ndarray] = {}  # bool {g: [B, A_g]}: the agent is in its env's episode
        self._returns: dict[str, np.ndarray] = {}  # float32 {g: [B, A_g]}

    # ------------------------------------------------------------------ conversions
    def _split(self, agent: str, o: Any, info: Mapping) -> tuple[Any, Any]:
        if isinstance(o, Mapping) and "observation" in o:
            return np.asarray(o["observation"]), o.get("action_mask")
        mask = info.get("action_mask") if isinstance(info, Mapping) else None
        return np.asarray(o), mask

    def _write_obs(self, i: int, obs: Mapping, infos: Mapping):
        """Env ``i``'s observations into the group arrays: zeros for agents without one; the
        mask is True for the agents still in the episode (a finished agent's final observation
        is kept at its last step, masked)."""
        for g, names in self.group_map.items():
            self._obs[g]["observation"][i] = 0
            if self._has_mask:
                self._obs[g]["action_mask"][i] = False
            self._obs[g]["mask"][i] = False
        for a, o in obs.items():
            g, j = self._index[a]
            x, m = self._split(a, o, infos.get(a, {}) if infos else {})
            self._obs[g]["observation"][i, j] = x
            if self._has_mask and m is not None:
                self._obs[g]["action_mask"][i, j] = np.asarray(m, bool)
        for a in self.envs[i].agents:
            g, j = self._index[a]
            self._obs[g]["mask"][i, j] = True
        for g in self.group_map:  # an agent out of the episode has no allowed action
            if self._has_mask:
                self._obs[g]["action_mask"][i] &= self._obs[g]["mask"][i][:, None]

    def _alloc(self, obs: Mapping, infos: Mapping):
        first: dict[str, tuple[Any, Any]] = {}
        for a in self.agents:
            if a in obs:
                first[a] = self._split(a, obs[a], infos.get(a, {}) if infos else {})
        missing = [a for a in self.agents if a not in first]
        if missing:
            raise ValueError(f"PettingZooEnvs: reset returned no observation for agents {missing}")
        self._has_mask = all(m is not None for _, m in first.values())
        B = self.num_envs
        self._obs = {}
        for g, names in self.group_map.items():
            x = first[names[0]][0]
            d = {"observation": np.zeros((B, len(names)) + x.shape, _canon(x.dtype)),
                 "mask": np.zeros((B, len(names)), bool)}
            if self._has_mask:
                d["action_mask"] = np.zeros((B, len(names)) + np.shape(first[names[0]][1]), bool)
            self._obs[g] = d
        self._mask = {g: d["action_mask"] for g, d in self._obs.items()} if self._has_mask else {}
        self._active = {g: np.zeros((B, len(n)), bool) for g, n in self.group_map.items()}
        self._returns = {g: np.zeros((B, len(n)), np.float32) for g, n in self.group_map.items()}

    def _snapshot(self) -> dict:
        return {g: {k: v.copy() for k, v in d.items()} for g, d in self._obs.items()}

    # ------------------------------------------------------------------ vector-env protocol
    def reset(self, *, seed: int | None = None, options: Mapping | None = None):
        mask = None if not options else options.get("reset_mask")
        which = range(self.num_envs) if mask is None else np.flatnonzero(np.asarray(mask)).tolist()
        for i in which:
            obs, infos = self.envs[i].reset(seed=None if seed is None else int(seed) + int(i))
            if self._has_mask is None:
                self._alloc(obs, infos)
            self._write_obs(i, obs, infos)
            for g in self.group_map:
                self._active[g][i] = self._obs[g]["mask"][i]
                self._returns[g][i] = 0.0
        return self._snapshot(), {}

    def step(self, actions: Mapping[str, Any]):
        B = self.num_envs
        self.check_action(actions, (B,))
        per = {g: {"reward": np.zeros((B, len(n)), np.float32), "done_now": np.zeros((B, len(n)), bool),
                   "truncated_now": np.zeros((B, len(n)), bool), "done_before": ~self._active[g].copy()}
               for g, n in self.group_map.items()}
        team = np.zeros(B, np.float32)
        term_ep, trunc_ep = np.zeros(B, bool), np.zeros(B, bool)
        for i, env in enumerate(self.envs):
            live = list(env.agents)
            act = {}
            for a in live:
                g, j = self._index[a]
                x = np.asarray(actions[g])[i, j]
                act[a] = x.item() if x.ndim == 0 else x
            obs, rew, terms, truncs, infos = env.step(act)
            self._write_obs(i, obs, infos)
            any_trunc = False
            for a in live:
                g, j = self._index[a]
                r = float(rew.get(a, 0.0))
                per[g]["reward"][i, j] = r
                team[i] += r
                tm, tr = bool(terms.get(a, False)), bool(truncs.get(a, False))
                per[g]["done_now"][i, j] = tm or tr
                per[g]["truncated_now"][i, j] = tr and not tm
                any_trunc |= tr
                if tm or tr:
                    self._active[g][i, j] = False
            ended = not any(self._active[g][i].any() for g in self.group_map) or not env.agents
            trunc_ep[i] = ended and any_trunc
            term_ep[i] = ended and not any_trunc
        for g in self.group_map:
            self._returns[g] += per[g]["reward"]
            per[g]["episode_reward"] = self._returns[g].copy()
        return self._snapshot(), team, term_ep, trunc_ep, {"agents": per}

    def close(self):
        for e in self.envs:
            close = getattr(e, "close", None)
            if close is not None:
                close()

    # ------------------------------------------------------------------ collector hooks
    def check_action(self, action: Any, lead: tuple[int, ...]) -> None:
        """The policy's actions: ``{g: [*lead, A_g, ...]}`` of the group's dtype (raises naming
        the group or agent)."""
        spec = {g: jax.ShapeDtypeStruct(self.action_shapes[g], self.action_dtypes[g]) for g in self.group_map}
        check_group_actions(action, self.group_map, spec, tuple(lead))

    def batch_layout(self, step: dict, info: Any) -> dict:
        """A collected batch in TorchRL's MARL layout (see :mod:`rlbuf.envs._marl`)."""
        return marl_layout(step, info, self.group_map)

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        return dict(self.group_map)
