"""``rlbuf.envs.make("SUITE:NAME", **kwargs) -> (env, env_params)`` for every JAX env suite.

Each suite is imported only when asked for, so ``import rlbuf.envs`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# suite -> (module, factory); a factory takes (name, **kwargs) and returns an env
_SUITES = {
    "brax": ("rlbuf.envs.brax_env", "make_brax"),
    "jumanji": ("rlbuf.envs.jumanji_env", "make_jumanji"),
    "navix": ("rlbuf.envs.navix_env", "make_navix"),
    "craftax": ("rlbuf.envs.craftax_env", "make_craftax"),
    "jaxmarl": ("rlbuf.envs.jaxmarl_env", "make_jaxmarl"),
}
_PACKAGES = {"gymnax": "gymnax", "brax": "brax", "jumanji": "jumanji", "navix": "navix",
             "craftax": "craftax", "jaxmarl": "jaxmarl"}


def make(spec: str, **kwargs: Any):
    """An env of a JAX suite and its parameters, ready for :class:`rlbuf.Collector`.

        env, env_params = rlbuf.envs.make("brax:inverted_pendulum", backend="mjx")
        collector = rlbuf.Collector(env, policy, frames_per_batch=1024, num_envs=8,
                                    env_params=env_params)

    Args:
        spec: ``"SUITE:NAME"`` with SUITE one of ``gymnax`` (``gymnax.make``), ``brax``
            (``brax.envs.get_environment``; keywords ``episode_length=1000``,
            ``action_repeat=1``, and the env's own such as ``backend="mjx"``), ``jumanji``
            (``jumanji.make``), ``craftax`` (``make_craftax_env_from_name``), ``navix``
            (``navix.make``), ``jaxmarl`` (``jaxmarl.make``, multi-agent: keywords
            ``group_map=None`` and ``time_limit="auto"`` of :class:`~rlbuf.envs.JaxMARLEnv`,
            and the env's own such as ``max_steps=25``; an unknown name raises listing
            JaxMARL's envs).
        **kwargs: passed to the suite's constructor; ``max_steps_in_episode=n`` (every suite
            but gymnax) adds a time limit of ``n`` steps (truncation).

    Returns:
        ``(env, env_params)``. gymnax envs are returned as they are; the others are wrapped in
        :class:`~rlbuf.envs.BraxEnv`, :class:`~rlbuf.envs.JumanjiEnv`,
        :class:`~rlbuf.envs.CraftaxEnv`, :class:`~rlbuf.envs.NavixEnv` or
        :class:`~rlbuf.envs.JaxMARLEnv`: gymnax 1.0 envs
        whose ``step`` auto-resets, returns the true final observation in
        ``info["final_observation"]`` and keeps ``terminated`` and ``truncated`` apart.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"env spec must be 'SUITE:NAME' (suites: {sorted(_PACKAGES)}), got {spec!r}")
    suite, name = spec.split(":", 1)
    if suite in ("gymnasium", "gym", "envpool"):
        raise ValueError(f"{suite} envs run on the host: use rlbuf.HostCollector with a "
                         "gymnasium.vector.VectorEnv (or an EnvPool pool), not rlbuf.envs.make")
    if suite not in _PACKAGES:
        raise ValueError(f"unknown env suite {suite!r} in {spec!r}; known: {sorted(_PACKAGES)}")
    try:
        importlib.import_module(_PACKAGES[suite])
    except ImportError as e:
        raise ImportError(f"rlbuf.envs.make({spec!r}) needs the {suite!r} package "
                          "(pip install 'rlbuf[envs]')") from e
    if suite == "gymnax":
        import gymnax

        return gymnax.make(name, **kwargs)
    module, factory = _SUITES[suite]
    env = getattr(importlib.import_module(module), factory)(name, **kwargs)
    return env, env.default_params
