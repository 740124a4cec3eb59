"""Project-wide test setup: the lab's pytest plugin (guest, volumes, VMs, libvirtd, leftover
check; see autoextend/lab/fixtures.py), pytester for testing that plugin, and a structlog reset
after every test (CLI tests configure logging onto pytest's capture streams, which are closed
when the test ends)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "autoextend.lab.fixtures",   # the lab: guest, volumes, VMs, libvirtd, leftover check
    "autoextend.lab.loopcheck",  # fails an async unit test whose event loop blocked
    "autoextend.lab.unitguard",  # make unit (AUTOEXTEND_UNIT=1): no QEMU, libvirtd, lvm2, ...
    "pytester",
]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
