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
