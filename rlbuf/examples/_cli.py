"""What the examples' command-line jobs share besides the learning itself: JAX's persistent
compilation cache, a frames progress bar, the learning-curve PNG and number formatting. None
of it is jitted; none of it runs at import time."""

from __future__ import annotations

import ast
import dataclasses
import os

import jax
import numpy as np

#: Where the command-line jobs keep JAX's persistent compilation cache (``RLBUF_JAX_CACHE``
#: overrides it; an empty value disables the cache).
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "rlbuf", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache, so that a second run of a job loads its
    compiled programs from disk instead of compiling them again. Returns the directory (None
    when disabled with ``RLBUF_JAX_CACHE=""``). Called by the examples' ``main`` only: a
    library import never changes JAX's global configuration."""
    path = os.environ.get("RLBUF_JAX_CACHE", DEFAULT_CACHE_DIR) if path is None else path
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # The training step takes seconds to compile; tiny helper programs are not worth a file.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def progress_bar(total: int, quiet: bool, desc: str):
    """A tqdm bar counting frames (disabled with ``quiet``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", unit_scale=True, desc=desc, disable=quiet, dynamic_ncols=True)


def save_curve(path: str, curves: dict, title: str) -> str:
    """Plot ``{label: (frames, returns)}`` to the PNG ``path``; returns its absolute path.
    matplotlib is in the ``examples`` extra; without it this raises ``ImportError`` naming it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"plotting the learning curve needs matplotlib: pip install -e \".[examples]\" ({e}); "
                          "or pass --no-plot") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("frames")
    ax.set_ylabel("greedy eval return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.abspath(path)


def fmt(x) -> str:
    """A return (or one per seed) for a progress line: ``" 123.4"`` or ``"[120 480 500]"``."""
    x = np.asarray(x)
    return f"{float(x):6.1f}" if x.ndim == 0 else "[" + " ".join(f"{v:.0f}" for v in x) + "]"


def override(cfg, assignments):
    """``cfg`` (a config dataclass) with ``--set NAME=VALUE`` assignments applied (``["lr=1e-3",
    "hidden=(64,64)"]``; values parsed as Python literals); a name that is not a field of the
    config exits naming it and the fields."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    updates = {}
    for a in assignments:
        name, _, value = a.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {a}: {name!r} is not a {type(cfg).__name__} field ({', '.join(sorted(fields))})")
        updates[name] = ast.literal_eval(value)
    return dataclasses.replace(cfg, **updates)
