"""Sharded buffers, sharded collectors and the async collector on 4 forced CPU devices.

All checks run in ONE subprocess (``multidevice_script.py``: the device count must be set
before JAX starts, and start-up plus compiles dominate); each test here reports one check.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.multidevice

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = [
    "buffer_random_matches_plain",
    "buffer_ndim1_matches_plain",
    "buffer_without_replacement_epoch",
    "buffer_random_uniform_chi2",
    "hlo_no_storage_collectives",
    "buffer_slice_sharded",
    "buffer_prioritized_sharded",
    "buffer_tuple_keys",
    "buffer_compact_global_storage",
    "collector_sharded_matches_local",
    "multisync_sharded",
    "collector_sharded_carry",
    "async_collector_per_worker_buffer",
    "buffer_regroup_4_to_2_devices",
]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_script.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    msg = f"script failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0 and lines, msg
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("name", CHECKS)
def test_check(results, name):
    assert name in results, f"check {name} did not run; ran: {sorted(results)}"
    r = results[name]
    if r.startswith("skip"):
        pytest.skip(r)
    assert r.startswith("ok"), r


def test_every_check_is_reported(results):
    assert sorted(results) == sorted(CHECKS)
