"""Sharded and per-worker buffers on 4 forced CPU devices (the collector checks are in
``test_multidevice_collectors.py``: separate files so parallel test workers share them out)."""

import os
import re

import pytest
from md_runner import CHECKS, HERE, check_group

pytestmark = pytest.mark.multidevice


@pytest.mark.parametrize("group", ["buffers_uniform", "buffers_samplers"])
def test_checks(group):
    check_group(group)


def test_every_check_of_the_script_is_in_a_group():
    with open(os.path.join(HERE, "multidevice_script.py")) as f:
        defined = re.findall(r"^@check\ndef (\w+)\(", f.read(), re.M)
    assert sorted(defined) == sorted(CHECKS)
