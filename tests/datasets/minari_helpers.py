"""Small local Minari datasets for the dataset tests (the env and the data collection).

``GroundTruthGym`` is a gymnasium env whose observation says where it comes from:
``[episode, step, length]`` (float32; or, with ``dict_obs``, ``{"where": [episode, step],
"length": [length]}``). Episodes last ``length`` steps, drawn in ``[2, 9]``; an episode
whose length is odd ends by termination, an even one by truncation; a ``TimeLimit`` of 8
truncates the longest ones too. So a loaded dataset can be checked item by item.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")


class GroundTruthGym(gym.Env):
    def __init__(self, dict_obs: bool = False):
        self.dict_obs = dict_obs
        box = gym.spaces.Box(-1.0, 1e6, (3,), np.float32)
        self.observation_space = (
            gym.spaces.Dict(
                {"where": gym.spaces.Box(-1.0, 1e6, (2,), np.float32), "length": gym.spaces.Box(0, 100, (1,), np.int32)}
            )
            if dict_obs
            else box
        )
        self.action_space = gym.spaces.Discrete(3)
        self.episode = -1

    def _obs(self):
        if self.dict_obs:
            return {
                "where": np.array([self.episode, self.step_], np.float32),
                "length": np.array([self.length], np.int32),
            }
        return np.array([self.episode, self.step_, self.length], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.step_ = 0
        self.length = int(self.np_random.integers(2, 10))
        return self._obs(), {}

    def step(self, action):
        self.step_ += 1
        end = self.step_ == self.length
        return self._obs(), float(action) + 0.5, end and self.length % 2 == 1, end and self.length % 2 == 0, {}


def collect(dataset_id: str, steps: int, *, dict_obs: bool = False, seed: int = 0):
    """A Minari dataset of ``steps`` random-policy steps (the episode in progress at the end is
    flushed by Minari as truncated)."""
    env = minari.DataCollector(gym.wrappers.TimeLimit(GroundTruthGym(dict_obs), max_episode_steps=8))
    env.action_space.seed(seed)
    env.reset(seed=seed)
    for _ in range(steps):
        _, _, te, tr, _ = env.step(env.action_space.sample())
        if te or tr:
            env.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari's notes on metadata left unset (eval_env, ...)
        return env.create_dataset(dataset_id, algorithm_name="random", code_permalink="-", author="rlbuf",
                                  author_email="-", description="test")


