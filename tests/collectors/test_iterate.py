"""iterate(): TorchRL's iteration protocol over one compiled collect."""

import jax
import numpy as np
import pytest

from rlbuf.collectors import Collector, iterate


@pytest.fixture(scope="module")
def collector(gt_env, checks):
    return Collector(gt_env, checks.constant_policy(0), frames_per_batch=8, num_envs=2,
                     env_params=gt_env.make_params(2, min_length=2, max_length=3))


def test_len_stop_and_single_compile(collector, checks):
    it = iterate(collector, jax.random.key(0), 1, total_frames=20)
    assert len(it) == 3  # rounded up to whole batches, like TorchRL
    batches = [jax.tree.map(np.asarray, b) for b in it]
    assert len(batches) == 3 and it.frames == 24
    assert it._collect._cache_size() == 1
    checks.ground_truth(checks.rows(batches, 2))
    # same batches as driving collect by hand
    _, ref = checks.run_batches(collector, 3, policy_params=1)
    jax.tree.map(np.testing.assert_array_equal, batches, ref)


def test_update_policy_params_and_state(collector):
    it = iterate(collector, jax.random.key(0), 0)
    with pytest.raises(TypeError):
        len(it)
    assert (next(it)["action"] == 0).all()
    it.update_policy_params(2)
    assert (next(it)["action"] == 2).all()
    saved = it.state
    b3 = next(it)
    it.state = saved  # restoring a state resumes exactly
    jax.tree.map(np.testing.assert_array_equal, next(it), b3)
    assert int(it.state.frames) == 24


def test_progress_bar(collector, capsys):
    for _ in iterate(collector, jax.random.key(0), 0, total_frames=16, progress=True):
        pass
    assert "frames/s" in capsys.readouterr().err
