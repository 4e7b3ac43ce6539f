"""Two ``jax.distributed`` processes on 127.0.0.1 (gloo CPU collectives), 2 devices each:
sharded collect, add (also of a batch built from process-local host data), sample and one
pmean-reduced learner step; both processes must see the same global results, and they must
match a numpy recomputation."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multihost

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("multihost")
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = os.environ.get("RLBUF_TEST_XLA_FLAGS", "")  # the suite's compile flags, no forced devices
    procs = [
        subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_script.py"), str(i), str(port),
                          str(d / f"p{i}.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed (rc={p.returncode}):\n{logs[i][-4000:]}"
    return [json.load(open(d / f"p{i}.json")) for i in range(2)]


def test_topology(outputs):
    for i, o in enumerate(outputs):
        assert (o["process_count"], o["device_count"], o["local_device_count"]) == (2, 4, 2), o


def test_global_results_agree_across_processes(outputs):
    a, b = outputs
    for k in ("traj_ids", "observation", "sample_obs", "sample_index", "storage_obs", "count", "params", "loss"):
        assert a[k] == b[k], k


def test_process_owns_its_lanes(outputs):
    ids = np.asarray(outputs[0]["traj_ids"])
    for i, o in enumerate(outputs):
        assert np.array_equal(np.asarray(o["local_traj_ids"]), ids[4 * i:4 * (i + 1)])
        assert o["rebuilt_equal"], "make_array_from_process_local_data did not rebuild the batch"


def test_collect_add_sample_consistent(outputs):
    o = outputs[0]
    obs = np.asarray(o["observation"])  # [8, 6, 4]
    ids = np.asarray(o["traj_ids"])
    assert (ids[:, 0] == np.arange(8)).all() and (obs[:, 0, 0] == np.arange(8)).all()
    pairs = {}
    for i, e, ep in zip(ids.reshape(-1), obs[..., 0].reshape(-1), obs[..., 1].reshape(-1)):
        assert pairs.setdefault(int(i), (int(e), int(ep))) == (int(e), int(ep))
    store = np.asarray(o["storage_obs"])  # [8, 16, 4]: the batch, then its rebuilt copy
    assert np.array_equal(store[:, :6], obs) and np.array_equal(store[:, 6:12], obs)
    assert o["count"] == [12, 12, 12, 12]
    lane, t = (np.asarray(x) for x in o["sample_index"])
    assert np.array_equal(store[lane, t], np.asarray(o["sample_obs"]))
    assert (t < 12).all()


def test_learner_step_is_the_global_mean(outputs):
    o = outputs[0]
    assert np.isclose(o["loss"], o["loss_ref"], rtol=1e-5)
    np.testing.assert_allclose(o["params"]["w"], o["w_ref"], rtol=1e-4)
