"""``python -m rlbuf.bench [--quick] [--only NAME ...] [--report [PATH]]``: one table of rlbuf
against its references.

Every row is measured in this process: rlbuf's time per unit of work, the reference's
(a hand-written floor, flashbax or TorchRL), and their ratio (below 1: rlbuf is faster).
A peer that is not installed is skipped with a note.

``--report [PATH]`` (for a lent GPU or TPU, or any machine): every module in a bounded time
(``--budget-s``, default 480 s; a module that would start after the budget is spent is listed
as skipped), one table with the device name, and the same rows as JSON at ``PATH`` (default
``bench_report.json``): ``{"machine", "device", "backend", "quick", "modules": {name:
{"seconds", "status"}}, "rows": [{"group", "case", "reference", "rlbuf_us", "ref_us",
"ratio", "unit", "note"}]}``. The ``xla`` module times each CPU-gated XLA trick against the
generic form other backends get, so one report covers both paths.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

from rlbuf.bench._timing import print_rows

MODULES = [
    "buffer", "slice", "slice_add", "prioritized", "xla", "collect", "scale", "ppo", "offline", "checkpoint", "host",
    "pixels", "slice_loop", "staleness",
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


def device() -> str:
    """The first device's kind as JAX names it (e.g. ``NVIDIA H100 80GB HBM3``, ``cpu``)."""
    import jax

    d = jax.devices()[0]
    return f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s))"


def run_modules(names, quick: bool, budget_s: float | None = None):
    """``(rows, modules)``: the rows of each module in ``names`` and ``{name: {"seconds",
    "status"}}``; with ``budget_s``, modules are skipped once that many seconds are spent."""
    rows, modules, t0 = [], {}, time.perf_counter()
    for name in names:
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            modules[name] = {"seconds": 0.0, "status": f"skipped: the {budget_s:.0f} s budget was spent"}
            continue
        tm = time.perf_counter()
        try:
            mod = importlib.import_module(f"rlbuf.bench.{name}")
        except ImportError as e:
            print(f"# skipped {name}: {e}", file=sys.stderr)
            modules[name] = {"seconds": 0.0, "status": f"skipped: {e}"}
            continue
        rows += mod.run(quick=quick)
        modules[name] = {"seconds": round(time.perf_counter() - tm, 1), "status": "ok"}
    return rows, modules


def write_report(path: str, rows, modules, quick: bool) -> dict:
    import jax

    report = {
        "machine": machine(), "device": device(), "backend": jax.default_backend(), "quick": quick,
        "modules": modules,
        "rows": [{"group": r.group, "case": r.case, "reference": r.ref_name, "rlbuf_us": r.ours_us,
                  "ref_us": r.ref_us, "ratio": r.ratio, "unit": r.unit, "note": r.note} for r in rows],
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument("--only", nargs="*", default=None, choices=MODULES)
    p.add_argument("--report", nargs="?", const="bench_report.json", default=None, metavar="PATH",
                   help="bounded run of every module; table with the device name plus JSON at PATH")
    p.add_argument("--budget-s", type=float, default=480.0, help="--report: seconds after which modules are skipped")
    args = p.parse_args(argv)
    rows, modules = run_modules(args.only or MODULES, args.quick, args.budget_s if args.report else None)
    print(f"Machine: {machine()}\nDevice: {device()}\n")
    print_rows(rows)
    if args.report:
        write_report(args.report, rows, modules, args.quick)
        spent = sum(m["seconds"] for m in modules.values())
        print(f"\nreport: {os.path.abspath(args.report)} ({len(rows)} rows, {spent:.0f} s in modules)")


if __name__ == "__main__":
    main()
