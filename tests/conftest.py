"""Shared pytest setup: make ``tests/`` importable so test modules in sub-folders can use
the plain-numpy reference models (``from reference import NumpyRingBuffer``)."""

import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
