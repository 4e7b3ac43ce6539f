"""Recurrent Q-learning from ``SliceSampler`` slices on a partially observable CartPole.

Run it::

    python -m rlbuf.examples.recurrent --memory gru     # GRU agent
    python -m rlbuf.examples.recurrent --memory none    # the same agent without memory (MLP)

The task: gymnax CartPole-v1 with the velocities hidden (observation ``[x, theta]``), so a
policy has to infer them from the history. Both agents share everything (collector, buffer,
slice sampling, double-DQN loss, schedules) except the network:

- ``gru``: ``obs -> dense(H) -> relu -> flax.linen.GRUCell(H) -> MLP -> Q``;
- ``none``: ``obs -> MLP -> Q`` (its "recurrent state" is a constant dummy).

How the pieces fit (R2D2's recipe with rlbuf's parts):

- The collector's policy is stateless (``policy(params, obs, key)``), so the recurrent state
  travels through the env, as with TorchRL's ``TensorDictPrimer``: :class:`RecurrentStatePrimer`
  wraps the env so that its observation is ``{"observation", "recurrent_state"}`` (zeros after a
  reset) and its action is ``{"action", "recurrent_state"}``: the policy returns its new hidden
  state with the action and the env hands it back with the next observation.
- So every stored step carries the hidden state the actor had *before* it
  (``("observation","recurrent_state")``). ``SliceSampler(traj_key=("collector","traj_ids"))``
  draws ``[num_slices, slice_len]`` slices that never cross an episode boundary; the learner
  unrolls the GRU over each slice from zeros (default) or from the stored state of its first
  step (``stored_state=True``, R2D2's variant), and masks the first ``burn_in`` steps out of
  the loss (they only warm the state up). With this small task and buffer the stored states were
  stale and learned much worse (docs/learning_curves.md), hence the zero-state default.
- The Q-value of step ``t``'s next observation is one more GRU step from the hidden state after
  step ``t``; inside a trajectory that is exactly the state at ``t + 1``, and at a slice's last
  step it still bootstraps correctly. Padding (``info["mask"]``) is masked out.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from gymnax.environments.classic_control.cartpole import CartPole

from rlbuf.examples import _loop, _nets
from rlbuf.replay_buffer import ReplayBuffer
from rlbuf.storage import LazyTensorStorage

TRAJ_KEY = ("collector", "traj_ids")


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


class RecurrentStatePrimer:
    """Env wrapper that carries a policy's recurrent state (TorchRL's primer pattern).

    Observation: ``{"observation": obs, "recurrent_state": h [hidden]}`` with ``h`` zeros after a
    reset. Action: ``{"action": a, "recurrent_state": h'}``; ``h'`` comes back with the next
    observation. Does not auto-reset (the collector resets done envs through ``reset``).
    """

    def __init__(self, env, hidden: int):
        self.env = env
        self.hidden = hidden

    @property
    def default_params(self):
        return self.env.default_params

    def _obs(self, obs, h):
        return {"observation": obs, "recurrent_state": h}

    def reset(self, key, params):
        obs, state = self.env.reset_env(key, params)
        h = jnp.zeros((self.hidden,), jnp.float32)
        return self._obs(obs, h), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, _ = self.env.step_env(key, state, action["action"], params)
        truncated = self.env.is_truncated(state, params)
        return self._obs(obs, action["recurrent_state"]), state, reward, terminated, truncated, {}

    # No ``action_space``: the collector then skips its action checks (gymnax's Dict space samples
    # OrderedDicts, a different pytree from the policy's dict) and random actions are not needed:
    # exploration is the policy's epsilon-greedy.


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

    def step(self, params, carry, obs):
        """``carry [..., carry_size]``, ``obs [..., obs_dim]`` -> ``(q [..., n_actions], carry)``."""
        return self.module.apply(params, carry, obs)

    def unroll(self, params, carry0, obs_seq, next_obs_seq):
        """Q-values along slices: ``carry0 [N, C]``, ``obs_seq``/``next_obs_seq [N, L, obs_dim]``
        -> ``(q [N, L, A], q_next [N, L, A])`` where ``q_next[:, t]`` is one step past the state
        after ``obs_seq[:, t]``, fed ``next_obs_seq[:, t]``."""

        def body(c, xs):
            o, no = xs
            q, c = self.step(params, c, o)
            q_next, _ = self.step(params, c, no)
            return c, (q, q_next)

        xs = (jnp.swapaxes(obs_seq, 0, 1), jnp.swapaxes(next_obs_seq, 0, 1))
        _, (q, q_next) = jax.lax.scan(body, carry0, xs)
        return jnp.swapaxes(q, 0, 1), jnp.swapaxes(q_next, 0, 1)


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
    """Hyper-parameters (frozen, hashable). Frames count env steps over all envs."""

    memory: str = "gru"
    seed: int = 0
    total_frames: int = 300_000
    num_envs: int = 8
    steps_per_collect: int = 4  # T of each [num_envs, T] collector batch
    updates_per_collect: int = 2
    buffer_size: int = 20_000
    num_slices: int = 32
    slice_len: int = 30
    burn_in: int = 10
    # Unroll from the actor's stored state (R2D2's "stored state") or from zeros ("zero state", the
    # default: with this buffer the stored states are stale and learning was much worse, see
    # docs/learning_curves.md). Either way the first burn_in steps only warm the state up.
    stored_state: bool = False
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


def _select(batch: dict) -> dict:
    """What the learner needs; the action's recurrent state is the next step's stored one."""
    return {
        "observation": batch["observation"],
        "action": batch["action"]["action"],
        "next": {k: batch["next"][k] for k in ("reward", "terminated")}
        | {"observation": batch["next"]["observation"]["observation"]},
        "collector": {"traj_ids": batch["collector"]["traj_ids"]},
    }


class RecurrentDQN(_loop.QLearnerLoop):
    """Double-DQN on slices with stored-state + burn-in (R2D2-style), one jitted chunk per call."""

    def __init__(self, cfg: RecurrentConfig):
        from rlbuf.collectors import Collector
        from rlbuf.samplers.slice import SliceSampler

        if cfg.memory not in ("gru", "none"):
            raise ValueError(f"memory must be 'gru' or 'none', got {cfg.memory!r}")
        per_collect = cfg.num_envs * cfg.steps_per_collect
        if cfg.log_every % per_collect:
            raise ValueError(f"log_every={cfg.log_every} must be a multiple of num_envs * steps_per_collect "
                             f"= {per_collect}")
        if not 0 <= cfg.burn_in < cfg.slice_len:
            raise ValueError(f"burn_in={cfg.burn_in} must be in [0, slice_len={cfg.slice_len})")
        self.cfg = cfg
        self.base_env = MaskedVelocityCartPole()
        self.env_params = self.base_env.default_params
        self.net = QNet(cfg.memory, 2, self.base_env.num_actions, cfg.hidden)
        self.env = RecurrentStatePrimer(self.base_env, self.net.carry_size)
        net, n_actions = self.net, self.base_env.num_actions

        def policy(pp, obs, key):
            q, h = net.step(pp["q"], obs["recurrent_state"], obs["observation"])
            greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
            k_a, k_e = jax.random.split(key)
            rand = jax.random.randint(k_a, greedy.shape, 0, n_actions, dtype=jnp.int32)
            action = jnp.where(jax.random.uniform(k_e, greedy.shape) < pp["eps"], rand, greedy)
            return {"action": action, "recurrent_state": h}

        self.collector = Collector(self.env, policy, frames_per_batch=per_collect, num_envs=cfg.num_envs,
                                   env_params=self.env_params)
        sampler = SliceSampler(slice_len=cfg.slice_len, traj_key=TRAJ_KEY, strict_length=False)
        self.rb = ReplayBuffer(storage=LazyTensorStorage(cfg.buffer_size, ndim=2), sampler=sampler,
                               batch_size=cfg.num_slices * cfg.slice_len)
        self.select = _select
        self.total_updates = max(1, (cfg.total_frames - cfg.learning_starts) // per_collect * cfg.updates_per_collect)
        self.tx = _nets.adam(cfg.lr, cfg.lr_end, self.total_updates, cfg.max_grad_norm)
        self.chunk = jax.jit(self._chunk, donate_argnums=0)
        self.evaluate = jax.jit(self._evaluate)

    def init_params(self, key):
        return self.net.init(key)

    def _loss(self, params, target, batch, mask):
        """Masked double-DQN Huber loss over ``[num_slices, slice_len]`` slices."""
        cfg = self.cfg
        obs, nobs = batch["observation"]["observation"], batch["next"]["observation"]
        h0 = batch["observation"]["recurrent_state"][:, 0]
        if not cfg.stored_state:
            h0 = jnp.zeros_like(h0)
        q, q_next_online = self.net.unroll(params, h0, obs, nobs)
        _, q_next_target = self.net.unroll(target, h0, obs, nobs)
        q_a = jnp.take_along_axis(q, batch["action"][..., None], axis=-1)[..., 0]
        a_star = jnp.argmax(q_next_online, axis=-1)
        q_next = jnp.take_along_axis(q_next_target, a_star[..., None], axis=-1)[..., 0]
        not_term = 1.0 - batch["next"]["terminated"].astype(jnp.float32)
        y = batch["next"]["reward"] + cfg.gamma * not_term * jax.lax.stop_gradient(q_next)
        td = q_a - y
        huber = _nets.huber(td)
        w = (mask & (jnp.arange(cfg.slice_len) >= cfg.burn_in)[None, :]).astype(jnp.float32)
        return jnp.sum(w * huber) / jnp.maximum(jnp.sum(w), 1.0)

    def _update(self, s: RecurrentState, key):
        buf, batch, info = self.rb.sample(s.buffer, key)
        loss, grads = jax.value_and_grad(self._loss)(s.params, s.target, batch, info["mask"])
        return self._apply_grads(s, grads, buf), loss

    def _evaluate(self, params, key):
        def act(h, obs):
            q, h = self.net.step(params, h, obs)
            return jnp.argmax(q, axis=-1).astype(jnp.int32), h

        n = self.cfg.eval_episodes
        h0 = jnp.zeros((n, self.net.carry_size), jnp.float32)
        ret = _nets.greedy_returns(self.base_env, self.env_params, act, h0, key, n,
                                   int(self.env_params.max_steps_in_episode))
        return ret.mean()


def train(cfg: RecurrentConfig, *, quiet: bool = False, plot: str | None = None) -> dict:
    """Train one agent; returns ``{"final_return", "curve": (frames, returns), "wall_time", ...}``;
    prints ``final eval return: X`` last."""
    t0 = time.perf_counter()
    agent = RecurrentDQN(cfg)
    key = jax.random.key(cfg.seed)
    key, k_init = jax.random.split(key)
    state = agent.init(k_init)
    state, key, frames_curve, returns_curve, losses = _loop.run_chunks(agent, state, key, quiet=quiet,
                                                                       desc=f"recurrent ({cfg.memory})")
    key, k = jax.random.split(key)
    final = float(agent.evaluate(state.params, k))
    wall = time.perf_counter() - t0
    png = None
    if plot:
        png = _nets.save_curve(plot, {f"memory={cfg.memory}": (frames_curve, returns_curve)},
                               f"Q-learning on CartPole, velocities hidden (seed {cfg.seed})")
    if not quiet:
        print(f"wall time {wall:.1f}s ({cfg.total_frames / wall:,.0f} frames/s incl. compilation)")
    if png:
        print(f"learning curve: {png}")
    print(f"final eval return: {final:.1f}")
    return {"final_return": final, "curve": (frames_curve, returns_curve), "losses": losses, "wall_time": wall,
            "state": state, "agent": agent}


def main(argv=None) -> dict:
    d = RecurrentConfig()
    p = argparse.ArgumentParser(prog="python -m rlbuf.examples.recurrent", description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", choices=("gru", "none"), default=d.memory, help="GRU agent or memoryless MLP")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--total-frames", type=int, default=d.total_frames)
    p.add_argument("--plot", default=None, metavar="PATH", help="save the learning curve as a PNG")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="frames between greedy evaluations")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    a = p.parse_args(argv)
    cfg = dataclasses.replace(d, memory=a.memory, seed=a.seed, total_frames=a.total_frames, eval_every=a.eval_every)
    _nets.enable_compilation_cache()
    return train(cfg, quiet=a.quiet, plot=a.plot)


if __name__ == "__main__":
    main()
