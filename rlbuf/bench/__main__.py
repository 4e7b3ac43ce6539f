"""``python -m rlbuf.bench [--quick] [--only NAME ...]``: one table of rlbuf against its references.

Every row is measured in this process: rlbuf's time per unit of work, the reference's
(a hand-written floor, flashbax or TorchRL), and their ratio (below 1: rlbuf is faster).
A peer that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

from rlbuf.bench._timing import print_rows

MODULES = [
    "buffer", "slice", "slice_add", "prioritized", "xla", "collect", "scale", "ppo", "offline", "checkpoint", "host",
    "pixels", "staleness",
]


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devs = ", ".join(sorted({d.platform for d in jax.devices()}))
    return (f"{cpu}; {os.cpu_count()} cores; Python {platform.python_version()}; "
            f"jax {jax.__version__} on {devs} ({jax.device_count()} devices)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument("--only", nargs="*", default=None, choices=MODULES)
    args = p.parse_args(argv)
    rows = []
    for name in args.only or MODULES:
        try:
            mod = importlib.import_module(f"rlbuf.bench.{name}")
        except ImportError as e:
            print(f"# skipped {name}: {e}", file=sys.stderr)
            continue
        rows += mod.run(quick=args.quick)
    print(f"Machine: {machine()}\n")
    print_rows(rows)


if __name__ == "__main__":
    main()
