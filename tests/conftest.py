"""Shared pytest setup: make ``tests/`` importable so test modules in sub-folders can use
the plain-numpy reference models (``from reference import NumpyRingBuffer``)."""

import os
import sys

# The examples' main() turns on JAX's persistent compilation cache (~/.cache/rlbuf/jax) for the
# whole process; tests that call main() in-process must not write compiled programs into the
# user's cache (nor share one cache between concurrent runs). The subprocess test of the cache
# sets its own RLBUF_JAX_CACHE.
os.environ["RLBUF_JAX_CACHE"] = ""

# One persistent compilation cache for this test session, shared by the xdist workers and the
# subprocesses the suite starts (docs pages, notebooks, the README, multi-device groups): the
# same programs are compiled in many of them, and again in every module after
# `_release_compiled_programs` below drops the in-memory caches. Measured on 2 idle cores: about
# 10% less CPU on buffer and sampler modules. A fresh directory per session (the controller
# makes it; workers inherit the variable), removed at exit: never the user's own cache.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "RLBUF_TEST_JAX_CACHE" not in os.environ:
    os.environ["RLBUF_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="rlbuf-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["RLBUF_TEST_JAX_CACHE"], True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["RLBUF_TEST_JAX_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# XLA:CPU compiled for compile time, not run time: the suite compiles several thousand
# programs and runs most of them a few times on tiny shapes, so compilation is ~80% of its CPU.
# LLVM at -O0 and the classic (non-MLIR) fusion emitters compile 2-4x faster (a slice-sampler
# buffer's add + sample 3.1 -> 1.3 s, a CartPole collector 2.1 -> 0.6 s) and run ~2.5x slower,
# which only the few tests that train for many steps notice: those are marked
# ``xla_optimized`` and compile with XLA's defaults (``_optimized_xla`` below). Semantics do not
# change (no fast-math either way). Inherited by every subprocess the suite starts; the flags
# are probed once in a child interpreter, so a jaxlib that dropped one runs with its defaults
# rather than aborting. RLBUF_TEST_XLA_FAST=0 runs the whole suite with XLA's defaults.
# (one LLVM module per program, not split for parallel codegen: another 15-25% less CPU per
# compilation; two busy workers on two cores gain nothing from the parallel form)
_FAST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                   "--xla_cpu_parallel_codegen_split_count=1")
#: compile options that undo ``_FAST_XLA_FLAGS`` for one compilation (XLA's own defaults)
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


def _fast_xla_flags() -> str:
    import subprocess

    if os.environ.get("RLBUF_TEST_XLA_FAST", "1") == "0":
        return ""
    probe = "import jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.zeros(2)).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=_FAST_XLA_FLAGS, JAX_PLATFORMS="cpu")
    ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=300).returncode == 0
    return _FAST_XLA_FLAGS if ok else ""


if "RLBUF_TEST_XLA_FLAGS" not in os.environ:  # the controller probes; xdist workers inherit
    os.environ["RLBUF_TEST_XLA_FLAGS"] = _fast_xla_flags()
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {os.environ['RLBUF_TEST_XLA_FLAGS']}".strip()

_TESTS = os.path.dirname(os.path.abspath(__file__))
# tests/storages too: buffers/test_frame_stack.py (rlbuf/buffers/frame_stack.py) reuses
# test_compact's episode simulator and comparison helpers.
for _path in (os.path.join(_TESTS, "storages"), _TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)


import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. Every XLA:CPU executable keeps its
    own memory mappings; the whole suite compiles thousands of programs in one process and ran
    into the kernel's mapping limit (vm.max_map_count, 65530 by default), which segfaulted
    inside XLA's compiler late in the run. Programs shared within a module are kept."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True)
def _optimized_xla(request):
    """Tests marked ``xla_optimized`` (training runs whose run time dominates) compile their
    programs with XLA's default optimization (``XLA_DEFAULTS`` as per-compilation overrides of
    the session's ``XLA_FLAGS``). Compilations of other tests are unchanged."""
    if not (os.environ.get("RLBUF_TEST_XLA_FLAGS") and request.node.get_closest_marker("xla_optimized")):
        yield
        return
    from jax._src import compiler

    plain = getattr(compiler, "get_compile_options", None)
    if plain is None:  # a JAX without this private hook: the test runs with the session's flags
        yield
        return

    def optimized(*args, env_options_overrides=None, **kwargs):
        return plain(*args, env_options_overrides={**XLA_DEFAULTS, **(env_options_overrides or {})}, **kwargs)

    compiler.get_compile_options = optimized
    try:
        yield
    finally:
        compiler.get_compile_options = plain


# Cost (seconds) of the longest test files: subprocess suites, notebooks,
# docs, example training runs, env suites that compile large programs. pytest-xdist's loadfile
# hands out whole files in collection order (`--no-loadscope-reorder` in pyproject: its default
# orders files by test count, which put the one-test multi-device subprocess files last, so one
# worker ran them alone at the end). Longest first lets the two workers finish together; files
# not listed follow, most tests first (xdist's own proxy). Only the order of the figures matters.
_FILE_COST = {
    # measured: seconds per file under pytest-xdist on 2 idle cores (`--durations=0`, junit
    # times summed per file, 2026-12-07, with the fast-compile XLA flags above)
    "tests/test_docs.py": 73,
    "tests/storages/test_compact.py": 58,
    "tests/test_notebooks.py": 40,
    "tests/samplers/test_slice.py": 34,
    "tests/examples/test_dqn.py": 32,
    "tests/multidevice/test_multidevice.py": 32,
    "tests/collectors/test_host.py": 30,
    "tests/test_checkpoint.py": 29,
    "tests/test_fuzz.py": 23,
    "tests/test_readme.py": 22,
    "tests/multidevice/test_multidevice_collectors.py": 20,
    "tests/samplers/test_burn_in.py": 19,
    "tests/envs/test_brax.py": 19,
    "tests/storages/test_host_memory.py": 19,
    "tests/buffers/test_frame_stack.py": 19,
    "tests/envs/test_craftax.py": 18,
    "tests/test_returns.py": 14,
    "tests/collectors/test_counters.py": 14,
    "tests/scaling/test_regrouping.py": 13,
    "tests/test_large_buffers.py": 12,
    "tests/buffers/test_ensemble.py": 11,
    "tests/scaling/test_sharding.py": 11,
    "tests/examples/test_recurrent.py": 11,
    "tests/scaling/test_per_worker.py": 10,
    "tests/collectors/test_collector.py": 10,
    "tests/envs/test_jaxmarl_env.py": 10,
    "tests/test_lint.py": 10,
    "tests/examples/test_ippo.py": 10,
    "tests/samplers/test_prioritized_slice.py": 10,
    "tests/examples/test_ppo.py": 10,
}


def pytest_collection_modifyitems(session, config, items):
    """Order test files longest first (see ``_FILE_COST``); tests keep their order inside a file."""
    files: dict[str, int] = {}
    for item in items:
        f = item.nodeid.split("::", 1)[0]
        files[f] = files.get(f, 0) + 1
    rank = {f: i for i, f in enumerate(sorted(files, key=lambda f: (-_FILE_COST.get(f, 0), -files[f], f)))}
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])
