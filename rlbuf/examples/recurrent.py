"""R2D2-style recurrent Q-learning on a partially observable CartPole.

Run it::

    python -m rlbuf.examples.recurrent --memory gru                 # GRU agent, seed 0
    python -m rlbuf.examples.recurrent --memory none                # the same agent without memory
    python -m rlbuf.examples.recurrent --memory gru --seeds 0 1 2   # three seeds at once (vmapped)

The task: gymnax CartPole-v1 with the velocities hidden (observation ``[x, theta]``), so a
policy has to infer them from the history. Both agents share everything (collector, buffer,
sequence sampling, loss, schedules) except the network:

- ``gru``: ``obs -> dense(H) -> relu -> flax.linen.GRUCell(H) -> MLP -> Q``;
- ``none``: ``obs -> MLP -> Q`` (its carry is a constant ``[1]`` dummy, so both share one path).

R2D2's recipe (Kapturowski et al., 2019) with rlbuf's parts:

- **Stored state.** ``Collector(..., policy_carry=init_fn, store_carry=True)``: the collector
  keeps each env's GRU state across steps and ``collect`` calls, resets it to zeros where an
  episode starts, and stores the state the policy *received* at every step at
  ``("collector", "carry")``, with ``"is_init"`` True at each episode's first step.
- **Burn-in sequences.** ``SliceSampler(slice_len=L, burn_in=B, traj_key=...)`` returns
  ``[num_slices, B + L]`` sequences of one episode each: ``L`` learning steps
  (``info["learning_mask"]``) and up to ``B`` steps just before them (front padding where the
  episode starts later, ``info["mask"]`` False). The learner starts its unroll from the stored
  state of the sequence's first real step (the sampler marks it ``"is_init"``), runs the
  burn-in steps without gradient (``jax.lax.stop_gradient``) to refresh that possibly stale
  state with the current weights, then the learning steps.
- **n-step double-Q targets.** ``rlbuf.returns.n_step_return`` sums ``n_steps`` rewards inside
  the sequence (never past a terminal step or the episode's stored end) and bootstraps from the
  target network's value of the online network's greedy action; the Huber loss is averaged over
  the real learning steps (``info["learning_mask"]``).
- One unroll gives every bootstrap value: inside an episode the next observation of step ``t``
  is the observation of ``t + 1``, so the unroll runs over ``B + L + 1`` inputs, the one after
  the last real step being its next observation.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces
from gymnax.environments.classic_control.cartpole import CartPole

from rlbuf import returns
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.examples import _cli, _loop, _nets
from rlbuf.storages import LazyTensorStorage

TRAJ_KEY = ("collector", "traj_ids")
CARRY_KEY = ("collector", "carry")
#: What the buffer stores of each collected step (``ReplayBuffer(keys=...)``).
STORED_KEYS = ("observation", "action", "is_init", ("next", "observation"), ("next", "reward"),
               ("next", "terminated"), TRAJ_KEY, CARRY_KEY)


class MaskedVelocityCartPole(CartPole):
    """CartPole-v1 observing only ``[x, theta]`` (cart position and pole angle)."""

    def __init__(self):
        super().__init__()
        self.obs_shape = (2,)

    def get_obs(self, state, params=None, key=None) -> jax.Array:
        return jnp.array([state.x, state.theta])

    def observation_space(self, params) -> spaces.Box:
        high = jnp.array([params.x_threshold * 2, params.theta_threshold_radians * 2], jnp.float32)
        return spaces.Box(-high, high, (2,), jnp.float32)

    @property
    def name(self) -> str:
        return "CartPole-v1-masked-velocity"


class _QModule(nn.Module):
    """The flax network behind :class:`QNet`: ``(carry, obs) -> (q, carry)``."""

    memory: str
    n_actions: int
    hidden: int
    obs_scale: tuple

    @nn.compact
    def __call__(self, carry, obs):
        # Velocities must be inferred from differences of consecutive positions (~0.02 * v per
        # step), so inputs are scaled to O(1) first.
        obs = obs * jnp.asarray(self.obs_scale, jnp.float32)
        h = self.hidden
        if self.memory == "gru":
            x = nn.relu(_nets.MLP((h,), name="enc")(obs))
            carry, _ = nn.GRUCell(features=h, name="gru")(carry, x)
            return _nets.MLP((h, self.n_actions), name="head")(carry), carry
        return _nets.MLP((h, h, self.n_actions), name="head")(obs), carry


@dataclasses.dataclass(frozen=True)
class QNet:
    """Q-network with an explicit carry. ``memory="gru"``: ``flax.linen.GRUCell`` of width
    ``hidden``; ``"none"``: an MLP whose carry is a constant ``[..., 1]`` dummy (so both agents
    share one code path)."""

    memory: str
    obs_dim: int
    n_actions: int
    hidden: int = 64
    obs_scale: tuple = (1.0 / 2.4, 1.0 / 0.2095)  # x and theta thresholds -> O(1) inputs

    @property
    def carry_size(self) -> int:
        return self.hidden if self.memory == "gru" else 1

    @property
    def module(self) -> _QModule:
        return _QModule(self.memory, self.n_actions, self.hidden, self.obs_scale)

    def init(self, key):
        return self.module.init(key, jnp.zeros((1, self.carry_size)), jnp.zeros((1, self.obs_dim)))

    def init_carry(self, num_envs):
        """The collector's ``policy_carry``: zeros ``[num_envs, carry_size]``."""
        return jnp.zeros((num_envs, self.carry_size), jnp.float32)

    def step(self, params, carry, obs):
        """``carry [..., carry_size]``, ``obs [..., obs_dim]`` -> ``(q [..., n_actions], carry)``."""
        return self.module.apply(params, carry, obs)

    def unroll(self, params, carry, x, reset, stored):
        """Q-values along sequences, time-major: ``carry [N, C]`` the state before ``x[0]``;
        ``x [T, N, obs_dim]`` the inputs; where ``reset [T, N]`` is True the state entering the
        step is ``stored [T, N, C]`` instead of the running one (a sequence's first real step:
        R2D2's stored state). Returns ``(q [T, N, A], carry after the last step)``."""

        def body(c, xs):
            o, r, s = xs
            q, c = self.step(params, jnp.where(r[:, None], s, c), o)
            return c, q

        carry, q = jax.lax.scan(body, carry, (x, reset, stored))
        return q, carry


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
    """Hyper-parameters (frozen, hashable). Frames count env steps over all envs."""

    memory: str = "gru"
    seed: int = 0
    total_frames: int = 307_200
    num_envs: int = 8
    steps_per_collect: int = 4  # T of each [num_envs, T] collector batch
    updates_per_collect: int = 2
    buffer_size: int = 20_000
    num_slices: int = 32
    slice_len: int = 20  # learning steps per sequence
    burn_in: int = 10  # steps before them that only refresh the stored state (no gradient)
    n_steps: int = 3
    hidden: int = 64
    lr: float = 5e-4
    lr_end: float = 5e-5
    gamma: float = 0.99
    max_grad_norm: float = 10.0
    target_tau: float = 1.0  # 1: hard target copy every target_update_every updates; < 1: Polyak rate
    target_update_every: int = 250
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.3
    learning_starts: int = 10_000
    log_every: int = 10_240  # frames per jitted call; a multiple of num_envs * steps_per_collect
    eval_every: int = 30_720
    eval_episodes: int = 32


RecurrentState = _loop.QLearnerState


class RecurrentDQN(_loop.QLearner):
    """R2D2-style double-DQN on burn-in sequences with stored state, one jitted chunk per call."""

    def __init__(self, cfg: RecurrentConfig):
        from rlbuf.collectors import Collector
        from rlbuf.samplers.slice import SliceSampler

        if cfg.memory not in ("gru", "none"):
            raise ValueError(f"memory must be 'gru' or 'none', got {cfg.memory!r}")
        per_collect = _loop.frames_per_collect(cfg)
        if cfg.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {cfg.n_steps}")
        self.cfg = cfg
        self.env = MaskedVelocityCartPole()
        self.env_params = self.env.default_params
        self.net = QNet(cfg.memory, 2, self.env.num_actions, cfg.hidden)
        net, n_actions = self.net, self.env.num_actions

        def policy(pp, obs, key, carry):
            q, carry = net.step(pp["q"], carry, obs)
            greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
            k_a, k_e = jax.random.split(key)
            rand = jax.random.randint(k_a, greedy.shape, 0, n_actions, dtype=jnp.int32)
            action = jnp.where(jax.random.uniform(k_e, greedy.shape) < pp["eps"], rand, greedy)
            return action, {}, carry

        self.collector = Collector(self.env, policy, frames_per_batch=per_collect, num_envs=cfg.num_envs,
                                   env_params=self.env_params, policy_carry=net.init_carry, store_carry=True)
        sampler = SliceSampler(slice_len=cfg.slice_len, burn_in=cfg.burn_in, traj_key=TRAJ_KEY,
                               strict_length=False)
        self.rb = ReplayBuffer(storage=LazyTensorStorage(cfg.buffer_size, ndim=2), sampler=sampler,
                               batch_size=cfg.num_slices * cfg.slice_len, keys=STORED_KEYS)
        self.total_updates = max(1, (cfg.total_frames - cfg.learning_starts) // per_collect * cfg.updates_per_collect)
        self.tx = _nets.adam(cfg.lr, cfg.lr_end, self.total_updates, cfg.max_grad_norm)
        self.chunk = jax.jit(self._chunk, donate_argnums=0)
        self.evaluate = jax.jit(self._evaluate)

    def init_params(self, key):
        return self.net.init(key)

    def sequence_q(self, params, batch, mask):
        """Q-values of ``[N, B + L]`` sequences (``B = burn_in``), unrolled from the stored state of
        each sequence's first real step (``"is_init"``, set there by the sampler), the burn-in
        steps without gradient. Returns ``(q, q_next)``, ``[N, L, A]`` each, for the learning
        steps: ``q_next[:, t]`` is the value of step ``t``'s next observation (one more step of
        the unroll: the following step's input inside the sequence, else the next observation)."""
        b = self.cfg.burn_in
        tm = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  [N, T, ...] -> time-major
        obs, nobs, mask = tm(batch["observation"]), tm(batch["next"]["observation"]), tm(mask)
        # Input t + 1: the stored observation of step t + 1 where it is real, else step t's next
        # observation (padding after it is never used).
        x = jnp.concatenate([obs[:1], jnp.where(mask[1:, :, None], obs[1:], nobs[:-1]), nobs[-1:]], axis=0)
        reset = jnp.concatenate([tm(batch["is_init"]), jnp.zeros_like(mask[:1])], axis=0)
        stored = tm(batch["collector"]["carry"])
        stored = jnp.concatenate([stored, stored[-1:]], axis=0)
        c0 = jnp.zeros_like(stored[0])
        if b:
            _, c0 = self.net.unroll(params, c0, x[:b], reset[:b], stored[:b])
            c0 = jax.lax.stop_gradient(c0)
        q, _ = self.net.unroll(params, c0, x[b:], reset[b:], stored[b:])
        q = tm(q)
        return q[:, :-1], q[:, 1:]

    def _loss(self, params, target, batch, info):
        """Masked n-step double-DQN Huber loss over the learning steps of the sequences."""
        cfg = self.cfg
        b = cfg.burn_in
        mask = info["mask"]
        q, q_next_online = self.sequence_q(params, batch, mask)
        _, q_next_target = self.sequence_q(target, batch, mask)
        learn = info["learning_mask"][:, b:]
        a_star = jnp.argmax(q_next_online, axis=-1)
        v_next = jnp.take_along_axis(q_next_target, a_star[..., None], axis=-1)[..., 0]
        term = batch["next"]["terminated"][:, b:]
        v_next = jnp.where(term, 0.0, jax.lax.stop_gradient(v_next))
        # n-step windows inside the learning steps: stop after a terminal step or the last real step
        ret, steps = returns.n_step_return(batch["next"]["reward"][:, b:], term, n_steps=cfg.n_steps,
                                           gamma=cfg.gamma, mask=learn)
        last = jnp.clip(jnp.arange(cfg.slice_len)[None, :] + steps - 1, 0, cfg.slice_len - 1)
        y = ret + cfg.gamma ** steps * jnp.take_along_axis(v_next, last, axis=1)
        q_a = jnp.take_along_axis(q, batch["action"][:, b:, None], axis=-1)[..., 0]
        w = learn.astype(jnp.float32)
        return jnp.sum(w * _nets.huber(q_a - y)) / jnp.maximum(jnp.sum(w), 1.0)

    def update(self, s: RecurrentState, key):
        buf, batch, info = self.rb.sample(s.buffer, key)
        loss, grads = jax.value_and_grad(self._loss)(s.params, s.target, batch, info)
        return self.apply_grads(s, grads, buf), loss

    def _evaluate(self, params, key):
        def act(h, obs):
            q, h = self.net.step(params, h, obs)
            return jnp.argmax(q, axis=-1).astype(jnp.int32), h

        n = self.cfg.eval_episodes
        ret = _nets.greedy_returns(self.env, self.env_params, act, self.net.init_carry(n), key, n,
                                   int(self.env_params.max_steps_in_episode))
        return ret.mean()


def train(cfg: RecurrentConfig, *, seeds=None, quiet: bool = False, plot: str | None = None) -> dict:
    """Train one agent (seed ``cfg.seed``), or with ``seeds=[s, ...]`` one per seed at once
    (vmapped). Returns ``{"final_return", "curve": (frames, returns), "losses", "wall_time",
    "state", "agent"}``; ``final_return`` is a fresh greedy evaluation of the last params (an
    ``[S]`` array with ``seeds``). Prints ``final eval return: X`` last."""
    t0 = time.perf_counter()
    agent = RecurrentDQN(cfg)
    runner = agent if seeds is None else _loop.Seeds(agent)
    key = jax.random.key(cfg.seed) if seeds is None else jax.vmap(jax.random.key)(jnp.asarray(seeds))
    key, k_init = _loop.split(key)
    state = runner.init(k_init)
    desc = f"recurrent ({cfg.memory})" + ("" if seeds is None else f" x{len(seeds)} seeds")
    state, key, frames_curve, returns_curve, losses, _ = _loop.run_chunks(runner, state, key, quiet=quiet, desc=desc)
    key, k = _loop.split(key)
    final = jax.device_get(runner.evaluate(state.params, k))
    wall = time.perf_counter() - t0
    png = None
    if plot:
        if seeds is None:
            curves = {f"memory={cfg.memory}": (frames_curve, returns_curve)}
        else:
            curves = {f"memory={cfg.memory} seed {s}": (frames_curve, [r[i] for r in returns_curve])
                      for i, s in enumerate(seeds)}
        png = _cli.save_curve(plot, curves, "R2D2-style Q-learning on CartPole, velocities hidden")
    n_seeds = 1 if seeds is None else len(seeds)
    if not quiet:
        print(f"wall time {wall:.1f}s ({cfg.total_frames * n_seeds / wall:,.0f} frames/s incl. compilation)")
    if png:
        print(f"learning curve: {png}")
    if seeds is not None:
        for i, s in enumerate(seeds):
            curve = " ".join(f"{r[i]:.0f}" for r in returns_curve)
            print(f"seed {s}: final eval return {final[i]:.1f}  curve {curve}")
        print(f"final eval return: {' '.join(f'{x:.1f}' for x in np.asarray(final))}")
    else:
        print(f"final eval return: {float(final):.1f}")
    return {"final_return": final if seeds is not None else float(final), "curve": (frames_curve, returns_curve),
            "losses": losses, "wall_time": wall, "state": state, "agent": agent}


def main(argv=None) -> dict:
    d = RecurrentConfig()
    p = argparse.ArgumentParser(prog="python -m rlbuf.examples.recurrent", description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", choices=("gru", "none"), default=d.memory, help="GRU agent or memoryless MLP")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train one agent per seed at once (vmapped)")
    p.add_argument("--total-frames", type=int, default=d.total_frames)
    p.add_argument("--plot", default=None, metavar="PATH", help="save the learning curve as a PNG")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="frames between greedy evaluations")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    a = p.parse_args(argv)
    cfg = dataclasses.replace(d, memory=a.memory, seed=a.seed, total_frames=a.total_frames, eval_every=a.eval_every)
    _cli.enable_compilation_cache()
    return train(cfg, seeds=a.seeds, quiet=a.quiet, plot=a.plot)


if __name__ == "__main__":
    main()
