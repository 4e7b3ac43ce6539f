"""``MultiAsyncCollector``'s iterator (issue 26 item 20): ``next`` after ``close`` raises
``StopIteration`` (no dropped batch, no blocking), a dropped iterator stops its workers, and an
error in a worker names the worker."""

from __future__ import annotations

import gc
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlbuf
from rlbuf.collectors.async_ import THREAD_NAME, WorkerError
from rlbuf.envs.ground_truth import OBS_ENV_ID

T = 3


def policy(params, obs, key):
    return jnp.full(obs.shape[:-1], params, jnp.int32)


@pytest.fixture(scope="module")
def col(gt_env):
    params = gt_env.make_params(4)  # env ids 0..3: worker w holds envs 2w, 2w + 1
    params = jax.tree.map(lambda x: x.reshape(2, 2), params)
    return rlbuf.MultiAsyncCollector([gt_env] * 2, policy, frames_per_batch=2 * T, num_envs=2, env_params=params)


def workers_alive():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME) and t.is_alive()]


def next_with_timeout(it, timeout=60.0):
    """``next(it)`` in a thread: ``("raised", exc)``, ``("value", v)`` or ``("blocked", None)``."""
    out = []

    def run():
        try:
            out.append(("value", next(it)))
        except BaseException as e:  # noqa: BLE001 -- reported to the test
            out.append(("raised", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ("blocked", None)


def test_next_after_close_stops(col):
    it = col.iterate(jax.random.key(0), 1)
    w, b = next(it)
    assert b["observation"].shape == (2, T, 4)
    time.sleep(0.5)  # let the workers queue batches that close() drops
    it.close()
    assert not workers_alive()
    for _ in range(3):  # no dropped batch comes back, and next never blocks
        kind, value = next_with_timeout(it)
        assert kind == "raised" and isinstance(value, StopIteration), (kind, value)
    assert list(it) == []


def test_dropped_iterator_stops_its_workers(col):
    it = col.iterate(jax.random.key(1), 1)
    for _ in it:
        break  # a bare break without close()
    assert workers_alive()
    del it
    gc.collect()
    deadline = time.monotonic() + 60
    while workers_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers_alive()


def test_worker_error_names_the_worker(gt_env):
    def fail_on_worker_1(obs):
        if (np.asarray(obs)[..., OBS_ENV_ID] >= 2).any():
            raise RuntimeError("env blew up")

    def bad_policy(params, obs, key):
        jax.debug.callback(fail_on_worker_1, obs)
        return policy(params, obs, key)

    params = jax.tree.map(lambda x: x.reshape(2, 2), gt_env.make_params(4))
    col = rlbuf.MultiAsyncCollector([gt_env] * 2, bad_policy, frames_per_batch=2 * T, num_envs=2, env_params=params)
    it = col.iterate(jax.random.key(0), 1)
    with pytest.raises(WorkerError, match="worker 1") as info:
        for w, _ in it:
            assert w == 0
    assert info.value.worker == 1 and info.value.__cause__ is not None
    assert not workers_alive()
    kind, value = next_with_timeout(it)
    assert kind == "raised" and isinstance(value, StopIteration)
