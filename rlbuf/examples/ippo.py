"""IPPO (independent PPO, one set of parameters shared by all agents) on JaxMARL's
``MPE_simple_spread_v3``, from rlbuf's multi-agent ``Collector``, ``rlbuf.returns.gae`` and
minibatches drawn by ``SamplerWithoutReplacement``.

Run it::

    python -m rlbuf.examples.ippo                                   # seed 0; writes ippo_mpe_seed0.png
    python -m rlbuf.examples.ippo --num-seeds 3 --plot ippo.png     # seeds 0-2 at once, one process

The configuration is JaxMARL's ``baselines/IPPO/config/ippo_ff_mpe.yaml`` (16 envs x 128 steps,
4 epochs of 4 minibatches, Adam 2.5e-4 annealed to 0, clip 0.2, GAE gamma 0.99 / lambda 0.95,
entropy 0.01, separate 64-64 tanh actor and critic), on a smaller frame budget (frames count env
steps, each one step of all 3 agents, as JaxMARL's ``TOTAL_TIMESTEPS`` does). One iteration:

1. ``Collector.collect`` of ``rlbuf.envs.make("jaxmarl:MPE_simple_spread_v3")``: a batch in
   TorchRL's MARL layout, group ``"agents"`` with leaves ``[B, T, A, ...]`` (``A = 3``); the
   policy gets ``{"agents": {"observation": [B, A, 18]}}``, samples each agent's action from
   the shared network and returns ``({"agents": action [B, A]}, {"log_prob", "value"})``
   (extras ``[B, A]``, stored as ``[B, T, A]``).
2. ``rlbuf.returns.gae`` per agent (the agent axis moved before time), with each agent's own
   reward, ``terminated`` and ``done`` and V of its TRUE next observation: MPE's time limit (26 steps)
   is a truncation and is bootstrapped (JaxMARL's IPPO treats it as terminal).
3. ``ReplayBuffer.add`` into a one-batch ``LazyTensorStorage(ndim=2)`` over ``[B, T]``; an
   epoch is ``num_minibatches`` samples of ``SamplerWithoutReplacement``, each ``[M, A, ...]``
   (all agents of one env step together); the loss averages over ``M * A`` agent-steps.
4. The clipped PPO loss of ``rlbuf.examples.ppo`` (the same function: it is shape-agnostic).

The driver is ``rlbuf.examples.ppo.train`` (seeds vmapped, iterations in a ``lax.scan`` inside
one ``jax.jit``); its training return is the collector's episode-level ``("next",
"episode_reward")``, the team's (the adapter's reward is the sum over agents).

Printed: first ``random-policy return: X`` (uniform random joint actions), last ``final eval
return: X``: a fresh greedy (argmax) evaluation of the LAST parameters, one value per seed.
Returns are team returns (the sum over agents and steps of the rewards in an episode), the
figure JaxMARL's ``MPELogWrapper`` logs (see ``rlbuf.examples._marl``).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

from rlbuf import returns
from rlbuf.buffers.replay_buffer import ReplayBuffer
from rlbuf.examples import _cli, _marl, ppo
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement
from rlbuf.storages import LazyTensorStorage

#: The agent group of a homogeneous env (``group_map=None``).
GROUP = "agents"


@dataclasses.dataclass(frozen=True)
class IPPOConfig(ppo.PPOConfig):
    """JaxMARL's ``ippo_ff_mpe.yaml`` (frozen, hashable); frames count env steps (all agents)."""

    total_frames: int = 1_048_576  # 512 iterations of 2048 frames (JaxMARL: 1e7)
    num_envs: int = 16
    steps_per_collect: int = 128
    env_name: str = "MPE_simple_spread_v3"
    log_every: int = 32_768
    eval_every: int = 131_072
    eval_episodes: int = 128


def _agents_first(x: jax.Array) -> jax.Array:
    """``[B, T, A]`` -> ``[B, A, T]`` (``returns.gae`` wants time last)."""
    return jnp.moveaxis(x, 2, 1)


class IPPO(ppo.PPO):
    """The PPO agent of ``rlbuf.examples.ppo`` on a multi-agent env: the same state, jitted
    chunk, loss and seeds-vmapped iteration; what differs is the env, the policy's layout, GAE
    per agent and the evaluation (team return on the JaxMARL env)."""

    def __init__(self, cfg: IPPOConfig):
        import jaxmarl

        from rlbuf import envs
        from rlbuf.collectors import Collector

        cfg.check()
        self.cfg = cfg
        self.env, self.env_params = envs.make(f"jaxmarl:{cfg.env_name}")
        self.marl_env = jaxmarl.make(cfg.env_name)  # evaluation: episodes straight on JaxMARL
        first = self.marl_env.agents[0]
        self.n_actions, self.obs_dim = _marl.agent_dims(self.marl_env, first)
        self.net = ppo.make_network(self.n_actions, cfg.hidden)
        self.tx = ppo.make_optimizer(cfg)
        net = self.net

        def policy(params, obs, key):
            """Sample every agent's action from ``obs[GROUP]["observation"] [B, A, obs_dim]``."""
            logits, value = net.apply(params, obs[GROUP]["observation"])
            action = jax.random.categorical(key, logits).astype(jnp.int32)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
            return {GROUP: action}, {"log_prob": logp, "value": value}

        self.collector = Collector(self.env, policy, frames_per_batch=cfg.frames_per_iter, num_envs=cfg.num_envs,
                                   env_params=self.env_params)
        self.rb = ReplayBuffer(storage=LazyTensorStorage(cfg.frames_per_iter, ndim=2),
                               sampler=SamplerWithoutReplacement(), batch_size=cfg.minibatch_size)
        self.chunk = jax.jit(self._chunk, donate_argnums=0)
        evaluate = jax.jit(jax.vmap(self._evaluate))
        # run_chunks passes one key: one evaluation key per seed is split off it
        self.evaluate = lambda params, key: evaluate(params, jax.random.split(key, self.cfg.num_seeds))

    def learner_batch(self, params, batch: dict) -> dict:
        """What is stored (leaves ``[B, T, A, ...]``): observations and actions of the group, the
        behaviour policy's ``"log_prob"`` / ``"value"``, and per-agent GAE ``"advantage"`` /
        ``"value_target"`` computed with V of each agent's true next observation."""
        cfg = self.cfg
        nxt = batch["next"][GROUP]
        _, next_value = self.net.apply(params, nxt["observation"])
        adv, target = returns.gae(*(_agents_first(x) for x in (nxt["reward"], batch["value"], next_value,
                                                                 nxt["terminated"], nxt["done"])),
                                  gamma=cfg.gamma, lmbda=cfg.gae_lambda)
        return {"observation": batch[GROUP]["observation"], "action": batch[GROUP]["action"],
                "log_prob": batch["log_prob"], "value": batch["value"], "advantage": _agents_first(adv),
                "value_target": _agents_first(target)}

    def _evaluate(self, params, key):
        """Mean team return of the greedy (argmax) joint policy over ``eval_episodes`` episodes."""
        act = lambda obs, k: jnp.argmax(self.net.apply(params, obs)[0], -1).astype(jnp.int32)  # noqa: E731
        return _marl.team_returns(self.marl_env, act, key, self.cfg.eval_episodes).mean()


def train(cfg: IPPOConfig, *, seeds=None, quiet: bool = False, plot: str | None = None) -> dict:
    """Print the random joint policy's team return, then train IPPO with ``ppo.train`` (one agent
    per seed, vmapped); returns ``ppo.train``'s dict plus ``"random_return"``. The last printed
    line is ``final eval return: X`` (one value per seed)."""
    import jaxmarl

    rnd = _marl.random_return(jaxmarl.make(cfg.env_name), jax.random.key(cfg.seed + 999_983), cfg.eval_episodes)
    print(f"random-policy return: {rnd:.1f}", flush=True)
    out = ppo.train(cfg, seeds=seeds, quiet=quiet, plot=plot, agent_cls=IPPO, solved=None, name="IPPO")
    out["random_return"] = rnd
    return out


def main(argv=None) -> dict:
    d = IPPOConfig()
    p = argparse.ArgumentParser(prog="python -m rlbuf.examples.ippo", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-seeds", type=int, default=d.num_seeds, help="train seeds seed, seed+1, ... at once")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train one agent per seed at once")
    p.add_argument("--total-frames", type=int, default=d.total_frames, help="env steps per seed")
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--steps-per-collect", type=int, default=d.steps_per_collect, help="T of each [B, T] batch")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="frames between greedy evaluations")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="where to write the learning curve PNG (default ippo_mpe_seed<S>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the learning curve")
    p.add_argument("--quiet", action="store_true", help="print only the random and the final returns")
    a = p.parse_args(argv)
    per = a.num_envs * a.steps_per_collect
    log_every = max(per, min(d.log_every, a.eval_every) // per * per)
    cfg = dataclasses.replace(d, seed=a.seed, num_seeds=a.num_seeds, total_frames=a.total_frames,
                              num_envs=a.num_envs, steps_per_collect=a.steps_per_collect,
                              eval_every=a.eval_every, log_every=log_every)
    plot = None if a.no_plot else (a.plot or f"ippo_mpe_seed{a.seed}.png")
    _cli.enable_compilation_cache()
    return train(cfg, seeds=a.seeds, quiet=a.quiet, plot=plot)


if __name__ == "__main__":
    main()
