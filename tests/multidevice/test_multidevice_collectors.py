"""Sharded collectors and the async collector feeding a per-worker buffer, on 4 forced CPU devices."""

import pytest
from md_runner import check_group

pytestmark = pytest.mark.multidevice


def test_collector_checks():
    check_group("collectors")


def test_regroup_checks():
    # (in this file, not the buffers' one: it balances the two files' subprocess time)
    check_group("regroup")
