"""Timing helpers shared by every benchmark module.

Each benchmark module exposes ``run(quick: bool = False) -> list[Row]``; ``python -m rlbuf.bench``
collects the rows into one table. Times are medians of several repeats of an already-compiled
function whose outputs are blocked on, so compile time never counts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Hashable, Mapping, MutableMapping, TypeVar

import jax

K = TypeVar("K", bound=Hashable)  # the names of the timed functions (str, or e.g. a bool flag)


@dataclasses.dataclass
class Row:
    """One line of the benchmark table.

    ``ours_us`` and ``ref_us`` are microseconds per unit of work (``unit``); ``ratio`` is
    ``ours_us / ref_us`` (below 1 means rlbuf is faster than the reference).
    """

    group: str
    case: str
    ref_name: str
    ours_us: float
    ref_us: float | None
    unit: str = "iter"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.ref_us else self.ours_us / self.ref_us


def time_fn(fn: Callable, *args, repeats: int = 7, number: int = 1) -> float:
    """Median wall time in seconds of ``fn(*args)`` (after one warm-up call).

    ``fn`` should be jitted; its output is blocked on so asynchronous dispatch is included.
    """
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / number)
    times.sort()
    return times[len(times) // 2]


def threaded(fns: Mapping[K, Callable], states: MutableMapping[K, Any], *args, repeats: int = 7,
             clock: Callable[[], float] = time.perf_counter) -> dict[K, tuple[float, float]]:
    """``(median, min)`` seconds per ``state = fn(state, *args)`` of each fn, repeats interleaved.

    Each fn carries (and may donate) its own state in ``states``, so an input is never reused;
    ``states`` is updated in place. The min is the least load-dependent estimate on a shared
    machine, where single calls vary by 2x. ``clock=time.process_time`` measures this process's
    CPU time instead of wall time (far less sensitive to other processes on a loaded machine).
    """
    for k, f in fns.items():  # compile + warm-up
        states[k] = jax.block_until_ready(f(states[k], *args))
    samples: dict[K, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = clock()
            states[k] = jax.block_until_ready(f(states[k], *args))
            samples[k].append(clock() - t0)
    return {k: (sorted(v)[len(v) // 2], min(v)) for k, v in samples.items()}


def medians(times: Mapping[K, tuple[float, float]]) -> dict[K, float]:
    """The medians of :func:`threaded`'s ``(median, min)`` results."""
    return {k: v[0] for k, v in times.items()}


def interleaved(fns: dict[str, Callable], *args, repeats: int = 7) -> dict[str, float]:
    """Median seconds per call of each of ``fns`` with their repeats interleaved.

    Interleaving makes ratios robust to the machine's load drifting during the run.
    """
    for f in fns.values():
        jax.block_until_ready(f(*args))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            samples[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def _us(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def print_rows(rows: list[Row], digits: int = 1) -> None:
    """Print ``rows`` as one markdown table (the format of ``python -m rlbuf.bench``).

    ``digits`` is the number of decimals of the µs columns (sub-µs per-frame costs need more than 1).
    """
    print("| group | case | reference | rlbuf µs | ref µs | ratio | unit | note |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in rows:
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}×"
        cells = [r.group, r.case, r.ref_name, _us(r.ours_us, digits), _us(r.ref_us, digits), ratio, r.unit, r.note]
        print("| " + " | ".join(cells) + " |")


def main_for(run: Callable[..., list[Row]], description: str, argv=None) -> None:
    """CLI of one benchmark module: ``[--quick]``, then ``print_rows(run(quick=...))``."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    print_rows(run(quick=p.parse_args(argv).quick))
