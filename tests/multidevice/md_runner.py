"""Runs ``multidevice_script.py`` checks on 4 forced CPU devices, one subprocess per group.

The checks run in subprocesses (``multidevice_script.py``: the device count must be set
before JAX starts), one per group of checks (``RLBUF_MD_ONLY``), so that parallel test workers
share them out.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GROUPS = {
    "buffers_uniform": [
        "buffer_random_matches_plain",
        "buffer_ndim1_matches_plain",
        "buffer_without_replacement_epoch",
        "buffer_random_uniform_chi2",
        "hlo_no_storage_collectives",
    ],
    "buffers_samplers": [
        "buffer_slice_sharded",
        "buffer_prioritized_sharded",
        "buffer_tuple_keys",
        "buffer_compact_global_storage",
    ],
    "collectors": [
        "collector_sharded_matches_local",
        "multisync_sharded",
        "collector_sharded_carry",
        "async_collector_per_worker_buffer",
    ],
    "regroup": ["buffer_regroup_4_to_2_devices"],
}
CHECKS = [c for names in GROUPS.values() for c in names]
_RESULTS: dict = {}


def run_group(group: str) -> dict:
    """The results of one group's checks, from one subprocess (cached per test process)."""
    if group not in _RESULTS:
        flags = f"{os.environ.get('RLBUF_TEST_XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
                   RLBUF_MD_ONLY=",".join(GROUPS[group]))
        proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_script.py")], env=env,
                              capture_output=True, text=True, timeout=900)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
        msg = f"script failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0 and lines, msg
        _RESULTS[group] = json.loads(lines[-1][len("RESULTS "):])
    return _RESULTS[group]


def check_group(group: str) -> None:
    results = run_group(group)
    assert sorted(results) == sorted(GROUPS[group]), f"ran {sorted(results)}, expected {sorted(GROUPS[group])}"
    failed = {n: r for n, r in results.items() if not (r.startswith("ok") or r.startswith("skip"))}
    assert not failed, "\n\n".join(f"{n}: {r}" for n, r in failed.items())
