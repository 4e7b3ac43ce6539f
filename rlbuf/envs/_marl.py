"""What the multi-agent adapters share: agent groups and TorchRL's MARL batch layout.

Agents are put in *groups* (TorchRL's ``group_map``); every per-agent leaf of a batch is stacked
over its group's agents, so a group ``g`` of ``A_g`` agents has leaves ``[B, T, A_g, ...]``.

Env-side layout (what :class:`rlbuf.envs.JaxMARLEnv` and :class:`rlbuf.envs.PettingZooEnvs`
return, and what the policy receives, leading ``[B]`` added by the collector):

- observation: ``{g: {"observation": [A_g, ...], "action_mask": bool [A_g, n]}}`` (the mask
  only when the env has available actions), plus the env's non-agent observations (SMAX's
  ``"world_state"``) at the root;
- action: ``{g: [A_g, ...]}``;
- reward: the sum over all agents of their rewards (a scalar: the collectors' running
  ``("next", "episode_reward")`` is the team's return);
- info ``{"agents": {g: {"reward", "done_now", "done_before", "episode_reward"}}}`` (``[A_g]``;
  optionally ``"truncated_now"``).

:func:`marl_layout` (each adapter's ``batch_layout``) turns one collected step into TorchRL's
layout (see its docstring).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp

#: Names a group may not have: the batch's own root keys.
RESERVED = frozenset({"next", "collector", "observation", "action", "step_count", "is_init", "reward",
                      "done", "terminated", "truncated", "episode_reward"})


def agent_class(name: str) -> str:
    """TorchRL's agent class of an agent name: the part before the last ``_`` (``adversary_0``
    -> ``adversary``), the whole name when it has no ``_``."""
    return name.rsplit("_", 1)[0] if "_" in name else name


def resolve_groups(agents: Sequence[str], signature: Callable[[str], Any],
                   group_map: str | Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """``{group: (agent names, ...)}`` in the order the groups first appear in ``agents``.

    Args:
        agents: every agent's name, in the env's order.
        signature: a hashable description of an agent's observation and action spaces (agents of
            one group must share it: their leaves are stacked).
        group_map: ``None`` (one group ``"agents"`` when every agent has the same signature, else
            one group per :func:`agent_class`), ``"per_agent"`` (a group per agent, named after
            it) or an explicit ``{group: [agent names]}`` naming every agent exactly once.
    """
    agents = list(agents)
    if not agents:
        raise ValueError("the env has no agents")
    if group_map is None:
        sigs = {a: signature(a) for a in agents}
        if len(set(sigs.values())) == 1:
            groups = {"agents": tuple(agents)}
        else:
            by_class: dict[str, list[str]] = {}
            for a in agents:
                by_class.setdefault(agent_class(a), []).append(a)
            groups = {g: tuple(v) for g, v in by_class.items()}
    elif isinstance(group_map, str):
        if group_map != "per_agent":
            raise ValueError(f"group_map must be None, 'per_agent' or a dict {{group: [agent names]}}, "
                             f"got {group_map!r}")
        groups = {a: (a,) for a in agents}
    elif isinstance(group_map, Mapping):
        groups = {}
        seen: dict[str, str] = {}  # {agent name: the group naming it}
        for g, names in group_map.items():
            if not isinstance(g, str):
                raise TypeError(f"group_map: group names must be strings, got {g!r}")
            if isinstance(names, str):
                raise TypeError(f"group_map[{g!r}] must be a list of agent names, got the string {names!r}")
            names = tuple(names)
            if not names:
                raise ValueError(f"group_map[{g!r}] is empty")
            for a in names:
                if a not in agents:
                    raise ValueError(f"group_map[{g!r}] names agent {a!r}, which the env does not have "
                                     f"(agents: {agents})")
                if a in seen:
                    raise ValueError(f"group_map names agent {a!r} twice (in groups {seen[a]!r} and {g!r})")
                seen[a] = g
            groups[g] = names
        missing = [a for a in agents if a not in seen]
        if missing:
            raise ValueError(f"group_map leaves out agents {missing}: every agent must be in exactly one group")
    else:
        raise TypeError(f"group_map must be None, 'per_agent' or a dict, got {type(group_map).__name__}")
    for g, names in groups.items():
        if g in RESERVED:
            raise ValueError(f"group name {g!r} is one of the batch's own keys {sorted(RESERVED)}; rename it "
                             "with group_map")
        sigs = {a: signature(a) for a in names}
        if len(set(sigs.values())) > 1:
            detail = "; ".join(f"{a}: {s}" for a, s in sigs.items())
            raise ValueError(f"group {g!r}: its agents' observation/action spaces differ ({detail}); their "
                             "leaves cannot be stacked: use group_map='per_agent' or a group_map that "
                             "separates them")
    return groups


def check_group_actions(action: Any, groups: Mapping[str, Sequence[str]], spec: Mapping[str, Any],
                        lead: tuple[int, ...]) -> None:
    """Trace-time check of a policy's actions: a dict ``{group: action}`` with every group, no
    other key, each ``lead + [A_g, ...space shape]`` of the space's dtype. Raises naming the
    group (and the agent, when the policy used an agent's name as a key)."""
    if not isinstance(action, Mapping):
        raise TypeError(f"a multi-agent policy returns {{group: action}} with groups {list(groups)}, got "
                        f"{type(action).__name__}")
    owner = {a: g for g, names in groups.items() for a in names}
    for k in action:
        if k not in groups:
            hint = f" ({k!r} is an agent of group {owner[k]!r})" if k in owner else ""
            raise ValueError(f"policy returned an action for group {k!r}, which the env does not have{hint}; "
                             f"groups: {list(groups)}")
    for g in groups:
        if g not in action:
            raise ValueError(f"policy returned no action for group {g!r} (agents {list(groups[g])}); "
                             f"groups: {list(groups)}")
        a, s = action[g], spec[g]
        if isinstance(a, Mapping) or isinstance(a, (list, tuple)):
            raise TypeError(f"policy action for group {g!r} must be one array [*, A_g, ...] stacked over the "
                            f"group's agents {list(groups[g])}, got a {type(a).__name__}")
        got, want = tuple(jnp.shape(a)), lead + tuple(s.shape)
        if got != want:
            raise ValueError(f"policy action for group {g!r} (agents {list(groups[g])}) has shape {got}, "
                             f"expected {want} (leading env dims {lead}, {len(groups[g])} agents, "
                             f"action shape {tuple(s.shape[1:])})")
        if jnp.result_type(a) != s.dtype:
            raise TypeError(f"policy action for group {g!r} has dtype {jnp.result_type(a)}, the group's "
                            f"action space has dtype {s.dtype}")


def marl_layout(step: dict, info: Any, groups: Mapping[str, Sequence[str]]) -> dict:
    """One collected step (leaves ``[*L, ...]``, ``L`` the env dims) in TorchRL's MARL layout.

    ``step`` holds the collector's keys over the env-side layout (see the module docstring);
    ``info`` the env's info. Returns, per group ``g`` (leaves ``[*L, A_g, ...]``):
    ``(g, "observation")``, ``(g, "action_mask")`` (if any), ``(g, "action")``,
    ``("next", g, k)`` for ``k`` in ``observation``, ``action_mask`` (if any), ``reward``,
    ``done``, ``terminated``, ``truncated``, ``episode_reward`` (the agent's running return);
    at the root the episode's ``("next", "reward" | "terminated" | "truncated" |
    "episode_reward")`` ``[*L]`` (reward: sum over agents), non-agent observations, the
    policy's extras and ``"collector"``.

    Per-agent flags: an agent done before this step (``done_before``: a dead SMAX unit) stays
    terminated (and not truncated); an agent done at this step (``done_now``) is terminated
    unless it was truncated itself (``truncated_now``, when the env says) or the episode was
    truncated at that step; when the episode ends every agent still in it takes the episode's
    terminated/truncated.
    """
    obs, nxt = step["observation"], step["next"]
    next_obs, action = nxt["observation"], step["action"]
    per_agent = info["agents"]
    clash = [k for k in step if k in groups]
    if clash:
        raise ValueError(f"policy extras {clash} have the names of agent groups; rename them")
    ep_term = nxt["terminated"][..., None]
    ep_trunc = nxt["truncated"][..., None]
    out = {k: v for k, v in step.items() if k not in ("observation", "action", "next")}
    new_next = {k: v for k, v in nxt.items() if k != "observation"}
    for k, v in obs.items():  # non-agent observations (SMAX's world_state) at the root
        if k not in groups:
            out[k] = v
            new_next[k] = next_obs[k]
    for g in groups:
        a = per_agent[g]
        before = a["done_before"]
        own_trunc = a.get("truncated_now", False)  # PettingZoo: an agent's own truncation
        term = before | (a["done_now"] & ~own_trunc & ~ep_trunc) | ep_term
        trunc = (ep_trunc | own_trunc) & ~before
        out[g] = {**obs[g], "action": action[g]}
        new_next[g] = {**next_obs[g], "reward": a["reward"], "done": term | trunc, "terminated": term,
                       "truncated": trunc, "episode_reward": a["episode_reward"]}
    out["next"] = new_next
    return out
