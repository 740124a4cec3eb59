"""Project-wide test setup: the lab's pytest plugin (guest, volumes, VMs, libvirtd, leftover
check; see autoextend/lab/fixtures.py), pytester for testing that plugin, and a structlog reset
after every test (CLI tests configure logging onto pytest's capture streams, which are closed
when the test ends), and the hypothesis profile.

Hypothesis profile: no per-example deadline and no "input generation is slow" health check.
The property tests check what the code computes, not how fast; on a loaded machine (make
test runs them beside the simulation and the lease torture, and CI may run a CPU hog
beside it) generating 1 input took 1.5 s once, and that failed a correct test. Per-test
``@settings(...)`` inherit these and change only what they name.

Profile "unit" (``make unit`` passes ``--hypothesis-profile=unit``): the same, with fewer
examples; an explicit count is written ``max_examples=examples(N)`` (tests/hypo.py) so it
shrinks with the profile. ``make test`` runs the full counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

from tests.hypo import UNIT_EXAMPLES

settings.register_profile("autoextend", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# make unit: fewer generated inputs per property (tests/hypo.py scales explicit counts).
settings.register_profile("unit", parent=settings.get_profile("autoextend"),
                          max_examples=UNIT_EXAMPLES)
settings.load_profile("autoextend")

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
