"""Shared fixtures: every emulated device gets its own loopback address, never shared between tests.

Addresses come from 127.64.0.0/10, split by process id so that several pytest runs on one machine (CI and a
developer, or parallel helpers) never bind the same address and port.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest

# The real Redis/PostgreSQL fixtures of the site-agent tests (pg_server, pg_url, redis_server).
pytest_plugins = ["tests._support.sites"]

_counter = itertools.count(1)


def allocate_loopback() -> str:
    """Return a fresh 127.x.y.z address for this process (x in 64..127, chosen by pid)."""
    n = next(_counter)
    x = 64 + (os.getpid() % 64)
    y, z = divmod(n, 250)
    if y > 255:
        raise RuntimeError("ran out of loopback addresses for this test process")
    return f"127.{x}.{y}.{z + 2}"


@pytest.fixture
def loopback_host() -> str:
    """A loopback address no other test in this run uses."""
    return allocate_loopback()


@pytest.fixture
def loopback_hosts() -> Callable[[], str]:
    """A factory of fresh loopback addresses."""
    return allocate_loopback
