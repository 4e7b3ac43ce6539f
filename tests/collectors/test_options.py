"""One options object (issue 25): every collector's keywords come from ``CollectorOptions``'s
fields, each collector hands its options on whole, and a new option is one declaration plus
its use, whichever way the collector is then run (plain, split, sharded, iterated)."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import rlbuf
from rlbuf.collectors import Collector, CollectorOptions, MultiSyncCollector, iterate

OPTIONS = [f.name for f in dataclasses.fields(CollectorOptions)]
T = 4


def policy(params, obs, key):
    return jnp.full(obs.shape[:-1], params, jnp.int32)


def test_options_are_every_collectors_keywords():
    for cls in (rlbuf.Collector, rlbuf.MultiSyncCollector, rlbuf.MultiAsyncCollector, rlbuf.HostCollector):
        params = inspect.signature(cls).parameters
        for name in OPTIONS:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (cls.__name__, name)
        assert list(params)[:2] == [list(params)[0], "policy"]
    assert set(OPTIONS) == {"frames_per_batch", "max_frames_per_traj", "init_random_frames", "reset_at_each_iter",
                            "postproc", "policy_carry", "store_carry"}


def test_options_are_handed_on_whole(gt_env):
    post = lambda b: b  # noqa: E731
    kw = dict(frames_per_batch=4 * T, max_frames_per_traj=3, init_random_frames=8, reset_at_each_iter=True,
              postproc=post)
    m = MultiSyncCollector([gt_env] * 2, policy, num_envs=2, **kw)
    assert m.options == CollectorOptions(**kw)
    assert isinstance(m.options, CollectorOptions) and type(m.options) is CollectorOptions
    groups = m.split(2)
    # each group: the same options, its share of the frames, postproc left to the caller
    assert groups.local.options == CollectorOptions(**dict(kw, frames_per_batch=2 * T, init_random_frames=4,
                                                           postproc=None))
    assert groups.postproc is post
    a = rlbuf.MultiAsyncCollector([gt_env] * 2, policy, num_envs=2, **dict(kw, frames_per_batch=2 * T))
    assert a.options == CollectorOptions(**dict(kw, frames_per_batch=2 * T))
    with pytest.raises(ValueError, match="store_carry=True needs policy_carry"):
        Collector(gt_env, policy, frames_per_batch=T, store_carry=True)
    with pytest.raises(ValueError, match="frames_per_batch must be a positive int"):
        MultiSyncCollector([gt_env], policy, frames_per_batch=0)


@dataclasses.dataclass(frozen=True, eq=False)
class ScaledRewards(Collector):
    """A collector with one new option, declared once (``reward_scale``) and used once."""

    reward_scale: float = 1.0  # the declaration

    def collect(self, state, policy_params=None, *, policy_version=None):
        state, batch = super().collect(state, policy_params, policy_version=policy_version)
        nxt = dict(batch["next"], reward=batch["next"]["reward"] * self.reward_scale)  # the use
        return state, dict(batch, next=nxt)


@pytest.fixture(scope="module")
def scaled(gt_env):
    kw = dict(frames_per_batch=2 * T, num_envs=2, env_params=gt_env.make_params(2))
    return Collector(gt_env, policy, **kw), ScaledRewards(gt_env, policy, reward_scale=3.0, **kw)


def test_new_option_plain_iterated_and_sharded(scaled):
    plain, c = scaled
    assert c.reward_scale == 3.0 and c.options == plain.options
    _, ref = jax.jit(plain.collect)(plain.init(jax.random.key(0)), 1)
    _, got = jax.jit(c.collect)(c.init(jax.random.key(0)), 1)
    np.testing.assert_allclose(got["next"]["reward"], 3.0 * np.asarray(ref["next"]["reward"]))
    np.testing.assert_array_equal(got["observation"], ref["observation"])
    b = next(iterate(c, jax.random.key(0), 1))
    np.testing.assert_allclose(b["next"]["reward"], got["next"]["reward"])
    # split keeps the collector's class and its option: sharded collection uses it too
    assert c.split(2).local.reward_scale == 3.0
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sc, sp = rlbuf.shard_collector(c, mesh), rlbuf.shard_collector(plain, mesh)
    _, sb = jax.jit(sc.collect)(sc.init(jax.random.key(0)), 1)
    _, sref = jax.jit(sp.collect)(sp.init(jax.random.key(0)), 1)  # (shards have their own key streams)
    np.testing.assert_allclose(sb["next"]["reward"], 3.0 * np.asarray(sref["next"]["reward"]))
