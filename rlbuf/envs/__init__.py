"""Test environments (gymnax >= 1.0 protocol)."""

from rlbuf.envs.ground_truth import GroundTruthEnv, GroundTruthParams, GroundTruthState

__all__ = ["GroundTruthEnv", "GroundTruthParams", "GroundTruthState"]
