"""The Atari example on a few frames of a real game: [84, 84] uint8 frames in, slices out."""

import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("gymnasium")

from rlbuf.examples import atari  # noqa: E402


def test_preprocessed_frames():
    env = atari.make_atari("Pong")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84) and obs.dtype == np.uint8 and obs.max() > obs.min()
    obs2, reward, term, trunc, _ = env.step(1)
    assert obs2.shape == (84, 84) and isinstance(reward, float)
    env.close()


def test_fills_a_buffer_and_samples_slices(capsys):
    out = atari.main(["--num-envs", "2", "--frames", "64", "--frames-per-batch", "32", "--capacity", "128",
                      "--num-slices", "2", "--slice-len", "4"])
    obs = np.asarray(out["slices"]["observation"])
    assert obs.shape == (2, 4, 84, 84, 4) and obs.dtype == np.uint8
    ids = np.asarray(out["slices"]["collector"]["traj_ids"])
    assert (ids == ids[:, :1]).all()
    # a slice is consecutive steps: the next frame of a step is the following step's frame
    np.testing.assert_array_equal(obs[:, 1:], np.asarray(out["slices"]["next"]["observation"])[:, :-1])
    # compact_next + FrameStack(4): single frames stored (64 ring slots + 8 table rows + head row)
    stored = np.asarray(out["state"].storage.data["observation"])
    assert stored.shape == (2, 64 + 8 + 1, 84, 84) and "observation" not in out["state"].storage.data["next"]
    np.testing.assert_array_equal(stored[tuple(np.asarray(i) for i in out["info"]["index"])], obs[..., -1])
    assert "sampled slices: observation (2, 4, 84, 84, 4) uint8" in capsys.readouterr().out
