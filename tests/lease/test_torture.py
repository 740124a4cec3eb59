"""Multi-process torture: N in {2,4,8} hosts, faults, SIGKILL, SIGSTOP/SIGCONT; 0 violations.

CI size: up to 60 s per N, stopping early once 3400 acquisitions are reached (10,000+ over the
three runs); AUTOEXTEND_LEASE_TORTURE_S overrides the time and disables the early stop. Soak:
``AUTOEXTEND_LEASE_TORTURE_S=86400 pytest -m slow tests/lease/test_torture.py`` or
``python -m tests.lease.torture SECONDS HOSTS``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anyio
import pytest

from .torture import check_history, run_torture
from .torture_setup import format_file

SECONDS = float(os.environ.get("AUTOEXTEND_LEASE_TORTURE_S", "60"))
TARGET = 0 if "AUTOEXTEND_LEASE_TORTURE_S" in os.environ else 3400
TOTAL: dict[int, int] = {}


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 3 + 120)
@pytest.mark.parametrize("hosts", [2, 4, 8])
async def test_torture_no_two_holders(hosts: int) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-torture-") as tmp:
        area = Path(tmp) / "area.img"
        await format_file(area, 16)
        result = await anyio.to_thread.run_sync(
            lambda: run_torture(
                Path(tmp), area, hosts, SECONDS, seed=hosts, io_timeout=0.05, watchdog=0.3,
                poll=0.005 if hosts <= 4 else 0.01, max_hosts=16, target=TARGET,
            )
        )
    TOTAL[hosts] = result.acquisitions
    print(f"torture hosts={hosts} acquisitions={result.acquisitions} kills={result.kills} "
          f"stops={result.stops} watchdog_fires={result.watchdog_fires} "
          f"total_so_far={sum(TOTAL.values())}")
    assert result.violations == []
    assert result.acquisitions > 50 * hosts
    assert result.kills > 0 and result.stops > 0


def test_history_checker_catches_overlap(tmp_path: Path) -> None:
    log = tmp_path / "h.log"
    log.write_text(
        "A 1 1 10.0\nW 1 1 10.1 10.2\nA 2 2 11.0\nW 1 1 11.5 11.6\nA 2 3 12.0\n"
        "V 2 2 12.1 3 2 0\n"
    )
    acquisitions, violations = check_history(log)
    assert acquisitions == 2
    assert len(violations) == 3
