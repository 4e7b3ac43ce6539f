"""Environments: the ground-truth test env and adapters for JAX env suites (gymnax >= 1.0 protocol).

``make("SUITE:NAME")`` builds an env of gymnax, Brax, Jumanji, Craftax, Navix or JaxMARL
(multi-agent, :class:`JaxMARLEnv`; PettingZoo on the host: :class:`PettingZooEnvs`); each suite
package is imported only when one of its envs is made.
"""

from rlbuf.envs._adapter import NO_LIMIT, MultiDiscrete, SuiteEnv, SuiteParams, SuiteState
from rlbuf.envs.brax_env import BraxEnv
from rlbuf.envs.craftax_env import CraftaxEnv
from rlbuf.envs.ground_truth import GroundTruthEnv, GroundTruthParams, GroundTruthState
from rlbuf.envs.ground_truth_marl import GroundTruthMARLEnv, GroundTruthMARLState
from rlbuf.envs.jaxmarl_env import JaxMARLEnv
from rlbuf.envs.jumanji_env import JumanjiEnv
from rlbuf.envs.make import make
from rlbuf.envs.navix_env import NavixEnv
from rlbuf.envs.pettingzoo_env import PettingZooEnvs

__all__ = [
    "NO_LIMIT",
    "BraxEnv",
    "CraftaxEnv",
    "GroundTruthEnv",
    "GroundTruthParams",
    "GroundTruthState",
    "GroundTruthMARLEnv",
    "GroundTruthMARLState",
    "JaxMARLEnv",
    "JumanjiEnv",
    "MultiDiscrete",
    "NavixEnv",
    "PettingZooEnvs",
    "SuiteEnv",
    "SuiteParams",
    "SuiteState",
    "make",
]
