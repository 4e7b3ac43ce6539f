"""All multi-device checks in one process with 4 forced CPU devices (run by test_multidevice.py;
subprocess start-up and compiles dominate, so the checks share one interpreter).

Prints one JSON line ``{"check name": "ok" | "skip: why" | "FAIL: traceback"}``.
"""

import json
import logging
import os
import re
import sys
import time
import traceback

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from rlbuf.buffers.replay_buffer import ReplayBuffer  # noqa: E402
from rlbuf.collectors.async_ import MultiAsyncCollector  # noqa: E402
from rlbuf.collectors.collector import Collector  # noqa: E402
from rlbuf.collectors.multi import MultiSyncCollector  # noqa: E402
from rlbuf.collectors.sharded import shard_collector  # noqa: E402
from rlbuf.envs import GroundTruthEnv  # noqa: E402
from rlbuf.samplers.prioritized import PrioritizedSampler  # noqa: E402
from rlbuf.samplers.random import RandomSampler  # noqa: E402
from rlbuf.samplers.slice import SliceSampler  # noqa: E402
from rlbuf.samplers.without_replacement import SamplerWithoutReplacement  # noqa: E402
from rlbuf.scaling.sharding import PerWorkerReplayBuffer, shard  # noqa: E402
from rlbuf.storages import LazyTensorStorage  # noqa: E402

D = 4
assert jax.device_count() == D, jax.devices()
MESH = Mesh(np.array(jax.devices()), ("data",))
TRAJ = ("collector", "traj_ids")
RESULTS, TIMES = {}, {}
COLLECTIVE = re.compile(r"\b(all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)(-start)?\(")


class _CompileLog(logging.Handler):
    """Counts XLA compilations per jitted function name (jax_log_compiles messages)."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
        if m:
            self.counts[m.group(1)] = self.counts.get(m.group(1), 0) + 1


COMPILES = _CompileLog()
logging.getLogger("jax").addHandler(COMPILES)
jax.config.update("jax_log_compiles", True)


ONLY = [n for n in os.environ.get("RLBUF_MD_ONLY", "").split(",") if n]  # debugging: run a subset


def check(fn):
    if ONLY and fn.__name__ not in ONLY:
        return fn
    t0 = time.perf_counter()
    try:
        out = fn()
        RESULTS[fn.__name__] = "ok" if out is None else out
    except Exception:
        RESULTS[fn.__name__] = "FAIL: " + traceback.format_exc()
    TIMES[fn.__name__] = round(time.perf_counter() - t0, 1)
    return fn


def host(x):
    def arr(v):
        if jnp.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        return np.asarray(v)

    return jax.tree_util.tree_map(arr, x)


def on_default_device(tree, g):
    """Element ``g`` of every leaf, fetched to the host and back to the default device (so a
    plain jitted function compiles once, not once per device)."""

    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(np.asarray(jax.random.key_data(x))[g])
        return jnp.asarray(np.asarray(x)[g])

    return jax.tree_util.tree_map(one, tree)


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(host(a)), jax.tree_util.tree_leaves(host(b))
    return len(la) == len(lb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb))


def chunk(tree, g, n=D):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[g * (x.shape[0] // n):(g + 1) * (x.shape[0] // n)], tree)


def collectives(compiled_text):
    return [line.strip() for line in compiled_text.splitlines() if COLLECTIVE.search(line)]


def data(rng, B, T, base=0):
    obs = rng.normal(size=(B, T, 3)).astype(np.float32)
    return {"obs": obs, "id": (base + np.arange(B * T, dtype=np.int32)).reshape(B, T), "next": {"r": obs[..., 0]}}


def per_shard_equal(srb, state, key, batch, info):
    """Shard g's part of a sharded sample equals the plain buffer on shard g's state and key
    fold_in(key, g); the global index reads the batch back from the global storage."""
    local = jax.jit(srb.local_buffer.sample)
    gs = host(srb.global_storage(state))
    idx = info["index"] if isinstance(info["index"], tuple) else (info["index"],)
    for g in range(D):
        st_g, b_g, i_g = local(srb.shard_of(state, g), jax.random.fold_in(key, g))
        assert tree_equal(b_g, chunk(batch, g)), f"shard {g}: batch differs from the plain buffer's"
        li = i_g["index"] if isinstance(i_g["index"], tuple) else (i_g["index"],)
        span = st_g.layout.lanes[0] if st_g.layout.lanes else st_g.layout.capacity
        want = (np.asarray(li[0]) + g * span, *map(np.asarray, li[1:]))
        got = tuple(chunk(i, g) for i in idx)
        assert all(np.array_equal(a, b) for a, b in zip(want, got)), f"shard {g}: index not offset right"
    gi = tuple(np.asarray(i) for i in idx)
    for k in ("obs", "id"):
        assert np.array_equal(gs[k][gi], np.asarray(batch[k])), f"global_storage[{k}][index] != batch"


def per_shard_equal_slices(srb, state, key, batch, info):
    local = jax.jit(srb.local_buffer.sample)
    for g in range(D):
        _, b_g, i_g = local(srb.shard_of(state, g), jax.random.fold_in(key, g))
        assert tree_equal(b_g, chunk(batch, g)), f"shard {g} slices differ from the plain buffer's"
        assert np.array_equal(np.asarray(i_g["index"][0]) + g * 2, chunk(info["index"][0], g))


# ----------------------------------------------------------------------------------- buffers
@check
def buffer_random_matches_plain():
    """Hypothesis: for add lengths around and beyond the capacity (12), sharded add == plain
    unsharded add (global storage, cursor, count); each shard's sample == the plain buffer on
    that shard with key fold_in(key, g); compiles once per add length, once for sample."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    rb = ReplayBuffer(storage=LazyTensorStorage(8 * 12, ndim=2), sampler=RandomSampler(), batch_size=16)
    srb = shard(rb, MESH)
    add, sample = jax.jit(srb.add, donate_argnums=0), jax.jit(srb.sample)
    padd = jax.jit(rb.add)
    seen = set()

    @settings(max_examples=12, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.sampled_from([3, 5, 17]), min_size=1, max_size=5), st.integers(0, 2**16))
    def prop(lengths, seed):
        rng = np.random.default_rng(seed)
        state, plain = srb.init(data(rng, 8, 3)), rb.init(data(rng, 8, 3))
        for i, T in enumerate(lengths):
            d = data(rng, 8, T, base=1000 * i)
            state, plain = add(state, jax.device_put(d, srb.sharding)), padd(plain, d)
            seen.add(T)
        assert tree_equal(srb.global_storage(state), plain.storage), "storage differs from the unsharded buffer"
        assert (np.asarray(state.cursor) == int(plain.cursor)).all()
        assert (np.asarray(state.count) == int(plain.count)).all()
        assert srb.num_stored(state) == 8 * int(plain.count)
        key = jax.random.key(seed)
        state, batch, info = sample(state, key)
        assert batch["obs"].shape == (16, 3) and batch["obs"].sharding.spec == P("data")
        assert state.storage["obs"].sharding.spec == P("data")
        per_shard_equal(srb, state, key, batch, info)
        assert bool(jax.jit(srb.can_sample)(state))

    prop()
    assert sample._cache_size() == 1, sample._cache_size()
    assert add._cache_size() == len(seen), (add._cache_size(), seen)
    assert not bool(jax.jit(srb.can_sample)(srb.init(data(np.random.default_rng(0), 8, 3))))


@check
def buffer_ndim1_matches_plain():
    """ndim=1: shard g holds transitions [g*N/D, (g+1)*N/D) of every add."""
    rb = ReplayBuffer(storage=LazyTensorStorage(64, ndim=1), batch_size=8)
    srb = shard(rb, MESH)
    rng = np.random.default_rng(1)
    flat = lambda d: jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), d)  # noqa: E731
    state = srb.init(flat(data(rng, 8, 1)))
    plains = [srb.local_buffer.init(chunk(flat(data(rng, 8, 1)), g)) for g in range(D)]
    for i in range(5):
        d = flat(data(rng, 4, 3, base=100 * i))  # [12] transitions, 3 per shard
        state = jax.jit(srb.add)(state, d)
        plains = [srb.local_buffer.add(p, chunk(d, g)) for g, p in enumerate(plains)]
    for g in range(D):
        assert tree_equal(srb.shard_of(state, g), plains[g]), f"shard {g} differs from the plain buffer"
    key = jax.random.key(3)
    state, batch, info = jax.jit(srb.sample)(state, key)
    per_shard_equal(srb, state, key, batch, info)


@check
def buffer_without_replacement_epoch():
    """SamplerWithoutReplacement: one epoch of the sharded buffer returns every stored item once."""
    rb = ReplayBuffer(storage=LazyTensorStorage(8 * 8, ndim=2), sampler=SamplerWithoutReplacement(), batch_size=8)
    srb = shard(rb, MESH)
    rng = np.random.default_rng(2)
    state = srb.add(srb.init(data(rng, 8, 4)), data(rng, 8, 4))
    sample = jax.jit(srb.sample)
    seen = []
    for i in range(4):  # 32 items / 8 per batch
        state, batch, info = sample(state, jax.random.key(i))
        assert np.asarray(info["mask"]).all()
        seen += list(zip(*(np.asarray(x).tolist() for x in info["index"])))
    assert sorted(seen) == [(b, t) for b in range(8) for t in range(4)], sorted(seen)


@check
def buffer_random_uniform_chi2():
    """Sharded RandomSampler is uniform over all stored items (chi-square)."""
    from scipy import stats

    rb = ReplayBuffer(storage=LazyTensorStorage(8 * 6, ndim=2), batch_size=32)
    srb = shard(rb, MESH)
    rng = np.random.default_rng(3)
    state = srb.add(srb.init(data(rng, 8, 6)), data(rng, 8, 6))
    sample = jax.jit(lambda s, k: srb.sample(s, k)[2]["index"])
    counts = np.zeros((8, 6))
    for i in range(150):
        lane, t = sample(state, jax.random.key(100 + i))
        np.add.at(counts, (np.asarray(lane), np.asarray(t)), 1)
    p = stats.chisquare(counts.reshape(-1)).pvalue
    assert p > 1e-3, p


@check
def hlo_no_storage_collectives():
    """Compiled sample (random, without replacement, slice, prioritized), add (random, slice) and
    update_priority contain no collective at all, so in particular no storage gather. Lowered
    from sharded abstract states: nothing runs, only the compiles."""
    rng = np.random.default_rng(4)
    d = data(rng, 8, 4)
    d["traj"] = np.repeat(np.arange(8, dtype=np.int32)[:, None], 4, axis=1)
    samplers = [RandomSampler(), SamplerWithoutReplacement(), SliceSampler(slice_len=2, traj_key="traj"),
                PrioritizedSampler(max_capacity=8 * 16, alpha=0.7, beta=0.5)]
    found = {}
    key = jax.random.key(0)
    for s in samplers:
        srb = shard(ReplayBuffer(storage=LazyTensorStorage(8 * 16, ndim=2), sampler=s, batch_size=16), MESH)
        sharded = lambda t: jax.tree_util.tree_map(  # noqa: E731
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=srb.sharding), t)
        state = sharded(jax.eval_shape(srb.init, d))
        fns = {"sample": (srb.sample, (state, key))}
        if isinstance(s, (RandomSampler,)) or type(s).__name__ == "SliceSampler":
            fns["add"] = (srb.add, (state, sharded(jax.eval_shape(lambda: d))))
        if isinstance(s, PrioritizedSampler):
            index = sharded(jax.eval_shape(srb.sample, state, key)[2]["index"])
            prio = jax.ShapeDtypeStruct((16,), jnp.float32, sharding=srb.sharding)
            fns["update_priority"] = (srb.update_priority, (state, index, prio))
        for name, (f, args) in fns.items():
            ops = collectives(jax.jit(f).lower(*args).compile().as_text())
            if ops:
                found[f"{type(s).__name__}.{name}"] = ops
    assert not found, found
    # the check can fail: can_sample's reduction over shards is a (tiny) all-reduce
    srb = shard(ReplayBuffer(storage=LazyTensorStorage(8 * 16, ndim=2), batch_size=16), MESH)
    state = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=srb.sharding),
                                   jax.eval_shape(srb.init, d))
    assert collectives(jax.jit(srb.can_sample).lower(state).compile().as_text()), "collective detection is blind"
    return "ok"


@check
def buffer_slice_sharded():
    """SliceSampler per shard: slices from a sharded collect are valid trajectories, and each
    shard's slices equal the plain buffer's on that shard."""
    env = GroundTruthEnv()
    N, T = 8, 10
    col = shard_collector(Collector(env, None, frames_per_batch=N * T, num_envs=N,
                                    env_params=env.make_params(N, min_length=3, max_length=7)), MESH)
    srb = shard(ReplayBuffer(storage=LazyTensorStorage(N * 24, ndim=2),
                             sampler=SliceSampler(num_slices=8, traj_key=TRAJ), batch_size=32), MESH)
    collect, add, sample = jax.jit(col.collect), jax.jit(srb.add, donate_argnums=0), jax.jit(srb.sample)
    cs = col.init(jax.random.key(0))
    cs, b = collect(cs, None)
    state = add(srb.init(b), b)
    for _ in range(3):
        cs, b = collect(cs, None)
        state = add(state, b)
    key = jax.random.key(5)
    state, batch, info = sample(state, key)
    obs = np.asarray(batch["observation"])
    assert obs.shape == (8, 4, 4) and np.asarray(info["mask"]).all()
    for s in obs:
        assert (s[:, 0] == s[0, 0]).all() and (s[:, 1] == s[0, 1]).all(), s  # one env, one episode
        assert (np.diff(s[:, 2]) == 1).all(), s  # consecutive steps
    assert (np.asarray(batch["collector"]["traj_ids"]) == np.asarray(batch["collector"]["traj_ids"])[:, :1]).all()
    per_shard_equal_slices(srb, state, key, batch, info)
    assert sample._cache_size() == 1 and add._cache_size() == 1


@check
def buffer_prioritized_sharded():
    """PrioritizedSampler per shard: samples == plain per shard; update_priority with the global
    info["index"] updates each shard as the plain buffer with the local index would."""
    rb = ReplayBuffer(storage=LazyTensorStorage(8 * 8, ndim=2),
                      sampler=PrioritizedSampler(max_capacity=8 * 8, alpha=0.8, beta=0.6), batch_size=16)
    srb = shard(rb, MESH)
    rng = np.random.default_rng(6)
    state = srb.add(srb.init(data(rng, 8, 8)), data(rng, 8, 8))
    sample, upd = jax.jit(srb.sample), jax.jit(srb.update_priority)
    state, batch, info = sample(state, jax.random.key(0))
    prio = jnp.asarray(rng.uniform(0.1, 5.0, size=16).astype(np.float32))
    new = upd(state, info["index"], prio)
    for g in range(D):
        li = (chunk(info["index"][0], g) - g * 2, chunk(info["index"][1], g))
        want = jax.jit(srb.local_buffer.update_priority)(srb.shard_of(state, g), li, chunk(prio, g))
        assert tree_equal(srb.shard_of(new, g).sampler, want.sampler), f"shard {g}: priorities differ"
    key = jax.random.key(1)
    new, batch, info = sample(new, key)
    per_shard_equal(srb, new, key, batch, info)
    assert "weight" in info and info["weight"].shape == (16,)
    # the documented distribution: P(item) = p^alpha / (G * sum of p^alpha over its shard)
    from scipy import stats

    lane, t = np.repeat(np.arange(8), 8), np.tile(np.arange(8), 8)  # row-major = shard-major chunks
    p_all = rng.uniform(0.2, 3.0, size=64).astype(np.float32)
    st_all = upd(new, (jnp.asarray(lane, jnp.int32), jnp.asarray(t, jnp.int32)), jnp.asarray(p_all))
    draw = jax.jit(lambda s, k: srb.sample(s, k)[2]["index"])
    counts = np.zeros(64)
    for i in range(120):
        li, ti = draw(st_all, jax.random.key(1000 + i))
        np.add.at(counts, np.asarray(li) * 8 + np.asarray(ti), 1)
    w = (p_all.astype(np.float64) + 1e-8) ** 0.8
    expected = (w.reshape(D, 16) / w.reshape(D, 16).sum(1, keepdims=True) / D).reshape(-1) * counts.sum()
    pval = stats.chisquare(counts, expected).pvalue
    assert pval > 1e-3, pval
    # an index in the wrong chunk is ignored, not written to the wrong shard
    swapped = tuple(jnp.roll(i, 4) for i in info["index"])
    odd = upd(new, swapped, jnp.full((16,), 100.0))
    for g in range(D):
        assert np.asarray(srb.shard_of(odd, g).sampler.max_priority) < 100.0


@check
def buffer_tuple_keys():
    """TorchRL-style tuple keys (``{("next", "r"): x}``) on 4 shards: ``init``/``add`` of a
    tuple-keyed batch (host data, and ``distributed.global_batch`` of a str/tuple mix) give the state and
    samples of the nested batch; ``keys=`` selects after nesting; a repeated tuple-keyed add does not recompile."""
    from rlbuf.scaling import distributed as dist

    def flat(d, mixed=False):  # a jit argument cannot mix str and tuple keys (JAX cannot sort them)
        return {"obs" if mixed else ("obs",): d["obs"], ("id",): d["id"], ("next", "r"): d["next"]["r"]}

    rng = np.random.default_rng(7)
    d0, d1 = data(rng, 8, 3), data(rng, 8, 5, base=100)
    for keys in (None, ["id", ("next", "r")]):
        srb = shard(ReplayBuffer(storage=LazyTensorStorage(8 * 6, ndim=2), batch_size=8, keys=keys), MESH)
        add, sample = jax.jit(srb.add), jax.jit(srb.sample)
        want = add(add(srb.init(d0), d0), d1)
        got = add(add(srb.init(flat(d0)), flat(d0)), dist.global_batch(flat(d1, mixed=True), MESH))
        assert tree_equal(got, want), f"keys={keys}: tuple-keyed state differs from the nested one"
        assert sorted(want.storage) == (["id", "next", "obs"] if keys is None else ["id", "next"])
        key = jax.random.key(2)
        assert tree_equal(sample(got, key)[1], sample(want, key)[1])
        n = add._cache_size()  # (one per argument structure: a tuple-keyed dict is another pytree)
        add(got, dist.global_batch(flat(d1, mixed=True), MESH))
        assert add._cache_size() == n, (n, add._cache_size())


@check
def buffer_compact_global_storage():
    """``compact_next`` on 4 shards (ndim 2 and 1, wrap-around): ``global_storage`` of the
    ``CompactState`` equals the plain sharded buffer's (every key, ``("next", k)`` rebuilt),
    ``global_storage(state)[k][info["index"]]`` is ``batch[k]``, samples equal the plain ones."""

    def episodes(c, B, T):  # obs [lane, step]; done every 3rd step with a distinct final obs
        t = c + np.arange(T)
        obs = np.stack(np.broadcast_arrays(np.arange(B)[:, None], t[None]), -1).astype(np.int32)
        done = np.broadcast_to((t + 1) % 3 == 0, (B, T))
        nxt = obs.copy()
        nxt[..., 1] = np.where(done, -(t + 1), t + 1)
        return {"observation": obs, "next": {"observation": nxt, "done": done}}, c + T

    for ndim in (2, 1):
        flat = (lambda d: d) if ndim == 2 else (  # noqa: E731
            lambda d: jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), d))
        mk = lambda **kw: shard(ReplayBuffer(  # noqa: E731
            storage=LazyTensorStorage(8 * 6, ndim=ndim, **kw), batch_size=8), MESH)
        plain, comp = mk(), mk(compact_next=True, final_obs_size=8 * 6)
        d, c = episodes(0, 8, 1)
        sp, sc = plain.init(flat(d)), comp.init(flat(d))
        for T in (4, 5, 4):
            d, c = episodes(c, 8, T)
            sp, sc = jax.jit(plain.add)(sp, flat(d)), jax.jit(comp.add)(sc, flat(d))
        gp, gc = host(plain.global_storage(sp)), host(comp.global_storage(sc))
        assert tree_equal(gc, gp), f"ndim={ndim}: compact global storage != plain"
        key = jax.random.key(4)
        (_, bp, ip), (_, bc, ic) = jax.jit(plain.sample)(sp, key), jax.jit(comp.sample)(sc, key)
        assert tree_equal(bc, bp) and tree_equal(ic, ip), f"ndim={ndim}: compact samples != plain"
        idx = ic["index"] if isinstance(ic["index"], tuple) else (ic["index"],)
        gi = tuple(np.asarray(i) for i in idx)
        for k in (("observation",), ("next", "observation"), ("next", "done")):
            got = gc[k[0]] if len(k) == 1 else gc[k[0]][k[1]]
            want = bc[k[0]] if len(k) == 1 else bc[k[0]][k[1]]
            assert np.array_equal(got[gi], np.asarray(want)), f"ndim={ndim}: global_storage{k}[index] != batch"


# -------------------------------------------------------------------------------- collectors
def assert_ids_consistent(batches):
    """Every traj id names exactly one (env_id, episode_id), and vice versa."""
    ids, owners = {}, {}
    for b in batches:
        tid = np.asarray(b["collector"]["traj_ids"]).reshape(-1)
        obs = np.asarray(b["observation"]).reshape(-1, 4)
        for i, (e, ep) in zip(tid.tolist(), obs[:, :2].tolist()):
            assert ids.setdefault(i, (e, ep)) == (e, ep), f"traj id {i} spans two episodes"
            assert owners.setdefault((e, ep), i) == i, f"episode {(e, ep)} has two ids"
    return ids


@check
def collector_sharded_matches_local():
    """Sharded Collector: init == unsharded init (reshaped); every shard's batch == its plain
    collector run alone on that shard's state (local_collect); ids unique and consistent;
    env i starts with id i; one compile; no collective in the compiled collect."""
    env = GroundTruthEnv()
    N, T = 8, 6
    base = Collector(env, lambda p, obs, k: (obs[:, 2] + p) % 3, frames_per_batch=N * T, num_envs=N,
                     env_params=env.make_params(N, min_length=2, max_length=5))
    col = shard_collector(base, MESH)
    key = jax.random.key(0)
    cs = col.init(key)
    ref = jax.jit(base.init)(key)
    assert tree_equal(jax.tree_util.tree_map(lambda x: x.reshape(N, *x.shape[2:]), cs.env_state), ref.env_state)
    assert tree_equal(cs.observation.reshape(N, 4), ref.observation)
    collect = jax.jit(col.collect)
    local = jax.jit(col.local_collect)
    jax.block_until_ready((collect(cs, jnp.int32(0)), local(on_default_device(cs, 0), jnp.int32(0), 0)))  # compile
    compiled_before = COMPILES.counts.get("collect", 0)
    batches = []
    for it in range(3):
        before = cs
        cs, b = collect(before, jnp.int32(it))
        assert b["observation"].shape == (N, T, 4) and b["observation"].sharding.spec == P("data")
        for g in range(D):
            st_g = on_default_device(before, g)
            st_out, b_g = local(st_g, jnp.int32(it), g)
            assert tree_equal(b_g, chunk(b, g)), f"iteration {it}, shard {g}: batch differs from the local collector"
            assert tree_equal(st_out, jax.tree_util.tree_map(lambda x: x[g], cs))
        batches.append(b)
    assert (np.asarray(batches[0]["collector"]["traj_ids"])[:, 0] == np.arange(N)).all()
    assert_ids_consistent(batches)
    # no recompilation across iterations (the dispatch cache may hold a second entry for the
    # same executable, so count compilations rather than collect._cache_size())
    assert COMPILES.counts.get("collect", 0) == compiled_before, COMPILES.counts
    ops = collectives(collect.lower(cs, jnp.int32(0)).compile().as_text())
    assert not ops, ops


@check
def multisync_sharded():
    """Sharded MultiSyncCollector (W=4 workers of B=2): [W, B, T] batches, shard g == plain local
    collector on its worker, ids consistent; per-worker env_params travel with the state."""
    env = GroundTruthEnv()
    W, B, T = 4, 2, 5
    params = jax.tree_util.tree_map(lambda x: x.reshape(W, B), env.make_params(W * B, min_length=2, max_length=4))
    base = MultiSyncCollector([env] * W, None, frames_per_batch=W * B * T, num_envs=B, env_params=params)
    col = shard_collector(base, MESH)
    cs = col.init(jax.random.key(1))
    collect, local = jax.jit(col.collect), jax.jit(col.local_collect)
    batches = []
    for it in range(2):
        before = cs
        cs, b = collect(before, None)
        assert b["observation"].shape == (W, B, T, 4)
        for g in range(D):
            _, b_g = local(on_default_device(before, g), None, g)
            assert tree_equal(b_g, chunk(b, g))
        batches.append(b)
    obs = np.asarray(batches[0]["observation"])
    assert (obs[..., 0, 0] == np.arange(W * B).reshape(W, B)).all()  # env_id of worker w, env j
    assert_ids_consistent(batches)


@check
def collector_sharded_carry():
    """Sharded Collector with a policy carry (counts steps since its reset): each shard's carry
    lives in its state, the stored carry and is_init equal the ground-truth step, and every shard
    equals its plain collector run alone."""
    env = GroundTruthEnv()
    N, T = 8, 5

    def policy(p, obs, k, carry):
        return (carry % 3).astype(jnp.int32), {}, carry + 1

    base = Collector(env, policy, frames_per_batch=N * T, num_envs=N, max_frames_per_traj=4,
                     env_params=env.make_params(N, min_length=2, max_length=6),
                     policy_carry=lambda n: jnp.zeros((n,), jnp.int32), store_carry=True)
    col = shard_collector(base, MESH)
    cs = col.init(jax.random.key(4))
    assert cs.policy_carry.shape == (D, N // D) and cs.policy_carry.sharding.spec == P("data")
    collect, local = jax.jit(col.collect), jax.jit(col.local_collect)
    for _ in range(3):
        before = cs
        cs, b = collect(before, None)
        step = np.asarray(b["observation"])[..., 2]
        assert (np.asarray(b["collector"]["carry"]) == step).all() and (np.asarray(b["is_init"]) == (step == 0)).all()
        for g in range(D):
            _, b_g = local(on_default_device(before, g), None, g)
            assert tree_equal(b_g, chunk(b, g)), f"shard {g}: batch differs from the local collector"
    return "ok"


# ---------------------------------------------------------------------------------- async
@check
def async_collector_per_worker_buffer():
    """MultiAsyncCollector: 4 workers on 4 devices; batches arrive from every worker; each goes
    into its worker's sub-buffer only (== a plain buffer fed that worker's batches); slices
    sampled after async collection are valid; ids unique across workers; new policy params
    reach every worker."""
    env = GroundTruthEnv()
    W, B, T = 4, 2, 6
    params = jax.tree_util.tree_map(lambda x: x.reshape(W, B), env.make_params(W * B, min_length=2, max_length=5))
    policy = lambda p, obs, k: jnp.full(obs.shape[:1], p, jnp.int32)  # noqa: E731
    col = MultiAsyncCollector([env] * W, policy, frames_per_batch=B * T, num_envs=B, env_params=params,
                              storing_device=jax.devices()[0])
    sampler = SliceSampler(slice_len=3, traj_key=TRAJ)
    rb = PerWorkerReplayBuffer(ReplayBuffer(storage=LazyTensorStorage(W * B * 16, ndim=2), sampler=sampler,
                                            batch_size=W * 2 * 3), W)
    add = jax.jit(rb.add_worker, donate_argnums=0)
    state, per_worker, order, batches = None, {w: [] for w in range(W)}, [], []
    after = {w: [] for w in range(W)}
    updated = False
    # Bounded by time, not by a batch count: on a loaded machine one worker's thread can lag
    # the others by dozens of batches (seen in CI with a cap of 60 batches).
    deadline = time.monotonic() + 120
    with col.iterate(jax.random.key(2), jnp.int32(0)) as it:
        for w, batch in it:
            if state is None:
                state = jax.device_put(rb.init(batch), jax.devices()[0])
            state = add(state, w, batch)
            per_worker[w].append(batch)
            order.append(w)
            batches.append(batch)
            if updated:
                after[w].append(batch)
            if not updated and all(per_worker[v] for v in range(W)):
                it.update_policy_params(jnp.int32(1))
                updated = True
            if updated and all(len(after[v]) >= 2 for v in range(W)) or time.monotonic() > deadline:
                break
    assert all(len(after[v]) >= 2 for v in range(W)), ("not every worker delivered", order)
    for v in range(W):  # a batch started after the update uses the new params: reward = 1 + action = 2
        assert (np.asarray(after[v][-1]["action"]) == 1).all(), v
    for b in batches:  # params == version here: each batch reports exactly the version that acted
        assert (np.asarray(b["collector"]["policy_version"]) == np.asarray(b["action"])).all()
        assert np.asarray(per_worker[v][0]["observation"])[:, 0, 0].tolist() == [v * B, v * B + 1]
    assert_ids_consistent(batches)
    plain_add = jax.jit(rb.local_buffer.add)
    for v in range(W):  # worker v's sub-buffer == a plain buffer fed only v's batches
        plain = rb.local_buffer.init(per_worker[v][0])
        for b in per_worker[v]:
            plain = plain_add(plain, b)
        assert tree_equal(jax.tree_util.tree_map(lambda x: x[v], state), plain), f"worker {v} sub-buffer"
    sample = jax.jit(rb.sample)
    state, s, info = sample(state, jax.random.key(3))
    assert sorted(set(np.asarray(info["index"][0]).reshape(-1).tolist())) == list(range(W))
    obs = np.asarray(s["observation"])
    assert np.asarray(info["mask"]).all()
    for sl in obs:
        assert (sl[:, :2] == sl[0, :2]).all() and (np.diff(sl[:, 2]) == 1).all(), sl
    gathered = np.asarray(state.storage["observation"])[tuple(np.asarray(i) for i in info["index"])]
    assert np.array_equal(gathered, obs)
    assert add._cache_size() == 1, add._cache_size()
    return "ok"


@check
def buffer_regroup_4_to_2_devices():
    """A 4-device sharded state: refused by a 2-device buffer naming both counts; a checkpoint
    of it is refused onto 2 devices ("saved with 4 groups, restoring into 2") unless
    ``regroup=True``, which gives the state the 2-device buffer built from the same batches.
    Last in this script: its orbax import may recompile functions jitted before it."""
    import tempfile

    import rlbuf.checkpoint as ckpt

    rb = ReplayBuffer(storage=LazyTensorStorage(8 * 12, ndim=2), sampler=RandomSampler(), batch_size=16)
    srb4, srb2 = shard(rb, MESH), shard(rb, Mesh(np.array(jax.devices()[:2]), ("data",)))
    rng = np.random.default_rng(5)
    batches = [data(rng, 8, 5, base=100 * i) for i in range(3)]
    s4, s2 = srb4.init(batches[0]), srb2.init(batches[0])
    for b in batches:
        s4, s2 = srb4.add(s4, b), srb2.add(s2, b)
    try:
        srb2.sample(s4, jax.random.key(0))
        raise AssertionError("a 4-group state was accepted by a 2-device buffer")
    except ValueError as e:
        assert "4 groups" in str(e) and "2 devices" in str(e), e
    with tempfile.TemporaryDirectory() as d:
        ckpt.save(d, s4)
        try:
            ckpt.restore(d, srb2.init(batches[0]))
            raise AssertionError("restored onto another group count")
        except ckpt.CheckpointMismatchError as e:
            assert "saved with 4 groups, restoring into 2" in str(e), e
        got = ckpt.restore(d, srb2.init(batches[0]), regroup=True)
    assert got.storage["obs"].sharding == s2.storage["obs"].sharding
    assert tree_equal(got, s2)
    key = jax.random.key(9)
    assert tree_equal(srb2.sample(got, key)[1:], srb2.sample(s2, key)[1:])


print("TIMES " + json.dumps(TIMES))
print("RESULTS " + json.dumps(RESULTS))
sys.stdout.flush()
