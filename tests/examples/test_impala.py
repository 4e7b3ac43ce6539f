"""The IMPALA example (``python -m rlbuf.examples.impala``): a tiny run of the asynchronous
actor-learner that checks the staleness bound held for every sampled rollout, that the
learner pushed versions to the actors (batches carry several versions), that both workers
delivered. Learning CartPole (>= 400) is a long run,
recorded in the report of the change, not run here."""

from __future__ import annotations

import dataclasses

import numpy as np

from rlbuf.examples import impala

CFG = dataclasses.replace(impala.ImpalaConfig(), total_frames=2048, num_envs=4, rollout_len=16, rollouts_per_worker=4,
                          max_staleness=2, eval_episodes=2, quiet=True)


def test_tiny_run_respects_the_staleness_bound():
    out = impala.train(CFG)
    assert out["frames"] == 2048 and out["updates"] > 0
    assert out["staleness"] and max(out["staleness"]) <= CFG.max_staleness and min(out["staleness"]) >= 0
    assert 0 < sum(out["staleness"].values()) <= out["updates"] * CFG.batch_rollouts  # masked ones not counted
    assert len(out["versions_seen"]) > 1 and out["versions_seen"][0] == 0  # versions pushed with params
    assert sum(out["worker_batches"]) == 2048 // (CFG.num_envs * CFG.rollout_len)
    assert np.isfinite(out["eval_return"]) and 0 < out["eval_return"] <= 500

