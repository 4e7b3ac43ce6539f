"""Atari into a replay buffer: ``[84, 84]`` uint8 frames of a real game, sampled as slices.

Run it::

    python -m rlbuf.examples.atari                       # Pong, 4 envs, 4096 frames
    python -m rlbuf.examples.atari --game Breakout --num-envs 8 --frames 20000 --vectorization async

``gymnasium`` + ``ale-py`` (the ROMs ship with ale-py) run the game on the host;
:class:`rlbuf.HostCollector` steps a vector env of them with a random policy and returns
``[B, T]`` batches as device arrays; they go into ``LazyTensorStorage(ndim=2,
compact_next=True)`` (one lane per env; each frame stored once, ``("next", "observation")``
rebuilt at sample time) and a ``SliceSampler`` draws ``[num_slices, slice_len, 84, 84, 4]``
sequences that never cross an episode, each step's last 4 frames stacked at sample time
(``ReplayBuffer(frame_stack=rlbuf.FrameStack(4))``, the first frame repeated before an
episode's start). Frames are preprocessed the DQN way (gymnasium's ``AtariPreprocessing``): ALE's
grayscale screen, 4 frames per step (``frameskip=4``, sticky actions off), max over the last
two frames against flicker, resized from 210x160 to 84x84 (a 2x2 box filter then nearest
sampling, in numpy: no OpenCV needed), up to 30 no-op actions at reset.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

SCREEN = (210, 160)


def _resize_index(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices that sample a 2x2-box-filtered ``[105, 80]`` screen at ``[size, size]``."""
    rows = ((np.arange(size) + 0.5) * (SCREEN[0] // 2) / size).astype(np.intp)
    cols = ((np.arange(size) + 0.5) * (SCREEN[1] // 2) / size).astype(np.intp)
    return rows[:, None], cols[None, :]


def make_atari(game: str = "Pong", size: int = 84, frame_skip: int = 4, noop_max: int = 30,
               max_episode_steps: int | None = 27_000):
    """A gymnasium Atari env whose observations are ``uint8 [size, size]`` frames."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)

    class AtariFrames(gym.Wrapper):
        """DQN preprocessing: frame skip with a max over the last two frames, grayscale,
        resize, random no-ops at reset."""

        def __init__(self, env):
            super().__init__(env)
            self.index = _resize_index(size)
            self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

        def _frame(self, a, b):
            # a 2x2 box filter then nearest sampling: close to an area resize, and no BLAS call
            # (a matmul resize oversubscribes threads when many envs run at once)
            s = np.maximum(a, b).astype(np.uint16)
            s = (s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2] + 2) // 4
            return s[self.index].astype(np.uint8)

        def reset(self, *, seed=None, options=None):
            obs, info = self.env.reset(seed=seed, options=options)
            for _ in range(int(self.np_random.integers(0, noop_max + 1))):
                obs, _, term, trunc, info = self.env.step(0)
                if term or trunc:
                    obs, info = self.env.reset()
            return self._frame(obs, obs), info

        def step(self, action):
            total, prev, obs = 0.0, None, None
            for _ in range(frame_skip):
                prev = obs
                obs, r, term, trunc, info = self.env.step(action)
                total += r
                if term or trunc:
                    break
            return self._frame(obs, obs if prev is None else prev), total, term, trunc, info

    env = gym.make(f"ALE/{game}-v5", obs_type="grayscale", frameskip=1, repeat_action_probability=0.0,
                   max_episode_steps=None if max_episode_steps is None else max_episode_steps * frame_skip)
    return AtariFrames(env)


def make_vec(game: str, num_envs: int, vectorization: str = "sync"):
    import gymnasium as gym

    fns = [lambda: make_atari(game) for _ in range(num_envs)]
    cls = gym.vector.AsyncVectorEnv if vectorization == "async" else gym.vector.SyncVectorEnv
    return cls(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def main(argv=None) -> dict:
    import rlbuf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--game", default="Pong")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--frames", type=int, default=4096, help="frames collected in total")
    p.add_argument("--frames-per-batch", type=int, default=512)
    p.add_argument("--capacity", type=int, default=8192, help="buffer size in transitions")
    p.add_argument("--num-slices", type=int, default=8)
    p.add_argument("--slice-len", type=int, default=8)
    p.add_argument("--vectorization", choices=["sync", "async"], default="sync")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    hc = rlbuf.HostCollector(make_vec(a.game, a.num_envs, a.vectorization), None,
                             frames_per_batch=a.frames_per_batch)
    rb = rlbuf.ReplayBuffer(storage=rlbuf.LazyTensorStorage(a.capacity, ndim=2, compact_next=True),
                            sampler=rlbuf.SliceSampler(num_slices=a.num_slices,
                                                       traj_key=("collector", "traj_ids")),
                            batch_size=a.num_slices * a.slice_len, frame_stack=rlbuf.FrameStack(4))
    add, sample = jax.jit(rb.add, donate_argnums=0), jax.jit(rb.sample)
    state, t0, episodes = None, time.perf_counter(), 0
    try:
        for batch in rlbuf.iterate(hc, jax.random.key(a.seed), total_frames=a.frames):
            state = rb.init(batch) if state is None else state
            state = add(state, batch)
            episodes += int(batch["next"]["done"].sum())
    finally:
        hc.close()
    elapsed = time.perf_counter() - t0
    if state is None:  # iterate yielded no batch (frames below one batch)
        raise SystemExit(f"no batch collected: --frames {a.frames} is less than one batch of {a.frames_per_batch}")
    # An empty or too-short buffer samples masked zeros (info["mask"] False) by design: say so
    # instead of showing padding as frames.
    if not bool(rb.can_sample(state)):
        print(f"no stored episode has {a.slice_len} steps yet: the slices below are padding (raise --frames)")
    state, slices, info = sample(state, jax.random.key(a.seed + 1))
    obs = slices["observation"]
    print(f"{a.game}: {a.frames} frames from {a.num_envs} envs in {elapsed:.1f}s "
          f"({a.frames / elapsed:.0f} frames/s), {episodes} episodes ended")
    print(f"buffer: {int(np.sum(state.count))} transitions stored, "
          f"frames {tuple(state.storage.data['observation'].shape)} {state.storage.data['observation'].dtype} "
          "(ring slots, final-observation table, head row)")
    print(f"sampled slices: observation {tuple(obs.shape)} {obs.dtype}, traj ids per slice "
          f"{np.asarray(slices['collector']['traj_ids'])[:, 0].tolist()}")
    return {"state": state, "slices": slices, "info": info, "episodes": episodes}


if __name__ == "__main__":
    main()
