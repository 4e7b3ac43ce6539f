"""The collector protocols (issue 25): anything implementing ``rlbuf.CollectorLike`` is driven by
``iterate``; anything implementing ``rlbuf.SplittableCollector`` by ``shard_collector``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import rlbuf
from rlbuf.collectors import Collector, iterate

T = 4


def policy(params, obs, key):
    return jnp.full(obs.shape[:-1], params, jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ClippedRewards:
    """A user's collector: wraps any splittable collector and clips its rewards (no rlbuf base
    class; it only implements the protocol's members)."""

    inner: object
    clip: float = 1.5
    jittable = True

    @property
    def frames_per_batch(self):
        return self.inner.frames_per_batch

    @property
    def batch_shape(self):
        return self.inner.batch_shape

    def init(self, key):
        return self.inner.init(key)

    def collect(self, state, policy_params=None, *, policy_version=None):
        state, batch = self.inner.collect(state, policy_params, policy_version=policy_version)
        nxt = dict(batch["next"], reward=jnp.minimum(batch["next"]["reward"], self.clip))
        return state, dict(batch, next=nxt)

    def split(self, n_groups, who="ClippedRewards.split"):
        return self.inner.split(n_groups, who).map(lambda c: ClippedRewards(c, self.clip))


@pytest.fixture(scope="module")
def user(gt_env):
    inner = Collector(gt_env, policy, frames_per_batch=2 * T, num_envs=2, env_params=gt_env.make_params(2))
    return inner, ClippedRewards(inner)


def test_builtin_collectors_implement_the_protocols(user):
    inner, c = user
    for obj in (inner, c):
        assert isinstance(obj, rlbuf.CollectorLike) and isinstance(obj, rlbuf.SplittableCollector)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    assert isinstance(rlbuf.shard_collector(inner, mesh), rlbuf.CollectorLike)


def test_user_collector_with_iterate_and_shard_collector(user):
    inner, c = user
    ref = next(iterate(inner, jax.random.key(0), 1))
    assert float(np.max(ref["next"]["reward"])) == 2.0  # reward = 1 + action: clipping shows
    it = iterate(c, jax.random.key(0), 1, total_frames=4 * T, policy_version=0)
    got = list(it)
    assert len(got) == 2 and it._collect._cache_size() == 1
    np.testing.assert_array_equal(got[0]["next"]["reward"], np.minimum(ref["next"]["reward"], 1.5))
    np.testing.assert_array_equal(got[0]["observation"], ref["observation"])
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sc = rlbuf.shard_collector(c, mesh)
    assert isinstance(sc.local_collector, ClippedRewards)
    sb = next(iterate(sc, jax.random.key(0), 1))
    sref = next(iterate(rlbuf.shard_collector(inner, mesh), jax.random.key(0), 1))  # (own key streams)
    np.testing.assert_array_equal(sb["next"]["reward"], np.minimum(sref["next"]["reward"], 1.5))
    np.testing.assert_array_equal(sb["observation"], sref["observation"])


def test_missing_members_are_named():
    class NoFlag:
        frames_per_batch = 4
        batch_shape = (4,)

        def init(self, key):
            return None

        def collect(self, state, policy_params=None):
            return state, {}

    with pytest.raises(TypeError, match="CollectorLike: missing jittable"):
        iterate(NoFlag(), jax.random.key(0))
    with pytest.raises(TypeError, match="SplittableCollector: missing jittable, split"):
        rlbuf.shard_collector(NoFlag(), Mesh(np.array(jax.devices()[:1]), ("data",)))
