"""Agent groups (``rlbuf.envs._marl.resolve_groups``): TorchRL's default rule, explicit maps, and
a Hypothesis property (every agent in exactly one group, env order kept within groups)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlbuf.envs._marl import agent_class, resolve_groups


def test_agent_class():
    assert agent_class("adversary_0") == "adversary"
    assert agent_class("red_team_12") == "red_team"
    assert agent_class("solo") == "solo"


def test_default_rule():
    same = lambda a: "s"  # noqa: E731
    assert resolve_groups(["agent_0", "agent_1"], same, None) == {"agents": ("agent_0", "agent_1")}
    by_class = lambda a: agent_class(a)  # noqa: E731
    names = ["adversary_0", "agent_0", "adversary_1", "agent_1"]
    assert resolve_groups(names, by_class, None) == {"adversary": ("adversary_0", "adversary_1"),
                                                     "agent": ("agent_0", "agent_1")}
    # a class whose agents differ cannot be stacked: the error names them and the way out
    with pytest.raises(ValueError, match="group 'agent'.*per_agent"):
        resolve_groups(["agent_0", "agent_1", "x_0"], lambda a: a, None)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c_d"]), st.integers(0, 3)), min_size=1, max_size=8,
                unique=True),
       st.sampled_from([None, "per_agent"]))
def test_groups_partition_the_agents(pairs, group_map):
    names = [f"{c}_{i}" for c, i in pairs]
    groups = resolve_groups(names, agent_class, group_map)
    flat = [a for g in groups.values() for a in g]
    assert sorted(flat) == sorted(names)
    for members in groups.values():  # env order within a group
        assert list(members) == [a for a in names if a in members]
    if group_map is None and len({agent_class(a) for a in names}) > 1:
        assert set(groups) == {agent_class(a) for a in names}
