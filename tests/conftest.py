"""Shared pytest setup: make ``tests/`` importable so test modules in sub-folders can use
the plain-numpy reference models (``from reference import NumpyRingBuffer``)."""

import os
import sys

# The examples' main() turns on JAX's persistent compilation cache (~/.cache/rlbuf/jax) for the
# whole process; tests that call main() in-process must not write compiled programs into the
# user's cache (nor share one cache between concurrent runs). The subprocess test of the cache
# sets its own RLBUF_JAX_CACHE.
os.environ["RLBUF_JAX_CACHE"] = ""

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


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
