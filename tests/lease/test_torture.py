"""Multi-process torture: N in {2,4,8} hosts, faults, SIGKILL, SIGSTOP/SIGCONT; 0 violations.

CI size: the three runs (N = 2, 4 and 8, each on its own shared file) run side by side for up
to RUN_S seconds and stop early once together they reach GOAL acquisitions. The test asserts
at least MIN_TOTAL acquisitions in total (the issue asks for 10,000) and 0 violations, and
prints the per-N counts. `make test` runs it beside the unit tests and the simulation (cpu), so
RUN_S is a cap well above the ~110 s the goal takes on a loaded 2-core machine: a slower
machine takes longer, it does not fail. The runs go side by side because each is bound by the latency of its
serial chain of I/Os and wake-ups (one holder at a time) more than by CPU. Timing: T = 50 ms,
W = 300 ms, waiting hosts poll every 20 ms, a holder pauses 0..5 ms between terms (see
torture.TORTURE_TIMING; a 5-10 ms poll cost a quarter more CPU per acquisition for no more
acquisitions).

Soak: ``AUTOEXTEND_LEASE_TORTURE_S=86400 pytest -m slow tests/lease/test_torture.py`` (per run,
no early stop), or ``python -m tests.lease.torture SECONDS HOSTS`` for one N.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import anyio
import pytest

from autoextend.lab.leasefile import format_file

from .torture import (
    TORTURE_TIMING,
    AcquisitionCounter,
    TortureResult,
    check_history,
    run_torture,
)

SOAK = "AUTOEXTEND_LEASE_TORTURE_S" in os.environ
RUN_S = float(os.environ.get("AUTOEXTEND_LEASE_TORTURE_S", "420"))
GOAL = 0 if SOAK else 13_000
MIN_TOTAL = 11_000
HOSTS = (2, 4, 8)
HOSTILE = (2, 8)


@pytest.mark.slow
@pytest.mark.cpu
@pytest.mark.timeout(RUN_S + 120)
async def test_torture_no_two_holders() -> None:
    counts = dict.fromkeys(HOSTS, 0)
    results: dict[int, TortureResult] = {}

    def enough(hosts: int, count: int) -> bool:
        counts[hosts] = count
        return GOAL > 0 and sum(counts.values()) >= GOAL

    async def one_run(tmp: Path, hosts: int) -> None:
        workdir = tmp / f"n{hosts}"
        workdir.mkdir()
        area = workdir / "area.img"
        # N = 2 and 8 run with every absent host id's records unreadable (hostile values
        # included): each ballot must go past them (README, "Unreadable dblocks").
        await format_file(area, 16, hostile=list(range(hosts + 1, 17)) if hosts in HOSTILE
                          else None)
        results[hosts] = await anyio.to_thread.run_sync(
            lambda: run_torture(
                workdir, area, hosts, RUN_S, seed=hosts, max_hosts=16, **TORTURE_TIMING,
                stop=lambda count: enough(hosts, count),
            )
        )

    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-torture-") as tmp:
        async with anyio.create_task_group() as tg:
            for hosts in HOSTS:
                tg.start_soon(one_run, Path(tmp), hosts)
    took = time.monotonic() - began
    total = sum(r.acquisitions for r in results.values())
    for hosts, r in sorted(results.items()):
        print(f"torture hosts={hosts} acquisitions={r.acquisitions} kills={r.kills} "
              f"stops={r.stops} watchdog_fires={r.watchdog_fires} restarts={r.restarts} "
              f"violations={len(r.violations)}")
    print(f"torture total acquisitions={total} in {took:.0f} s")
    violations = [v for r in results.values() for v in r.violations]
    assert violations == []
    if not SOAK:
        assert total >= MIN_TOTAL
    for hosts, r in results.items():
        assert r.acquisitions > 50 * hosts
        assert r.kills > 0 and r.stops > 0


def test_history_checker_catches_overlap(tmp_path: Path) -> None:
    log = tmp_path / "h.log"
    log.write_text(
        "A 1 1 10.0\nW 1 1 10.1 10.2\nA 2 2 11.0\nW 1 1 11.5 11.6\nA 2 3 12.0\n"
        "V 2 2 12.1 3 2 0\n"
    )
    acquisitions, violations = check_history(log)
    assert acquisitions == 2
    assert len(violations) == 3


def test_acquisition_counter_reads_only_complete_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "h.log"
    counter = AcquisitionCounter(log)
    assert counter.count() == 0
    log.write_bytes(b"A 1 1 1.0\nW 1 1 1.1 1.2\nA 2 2 2.")
    assert counter.count() == 1
    with open(log, "ab") as f:
        f.write(b"0\nA 3 1 3.0\n")
    assert counter.count() == 3
