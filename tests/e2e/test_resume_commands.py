"""Issue 30 item 5 on real guests (QMP, local extender): how many QMP commands the monitor
sends from the extender's OK to ``cont`` (at most 3), and from a threshold event to the
re-armed threshold (1, no migration known), counted on the QMP connection itself
(``QmpConnection.recent``, through ``autoextend/lab/qmpcount.py``). Each count is held against the old path
(``MonitorContext.fast_resume`` off: a migration probe before every extension and a full look
after it), which must need more: the counts can fail.

The service's own background queries are kept out of the window (no drive watch, no poll
within the test), so every command counted is one the resume or re-arm path sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.qmpcount import CommandCounts
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.waiting import until
from autoextend.qmp.hypervisor import QmpHypervisor
from tests.doubles import HeldExtender

pytestmark = pytest.mark.slow
MiB = 1 << 20
QUIET = {"qmp": {"drive_watch_interval_s": 3600.0}}  # no drive-set poll in the window


def paused(host: LabHost, vm: str) -> Any:
    return next((v["paused"] for v in host.service.monitor.snapshot() if v["vm"] == vm), None)


async def _ok_to_cont(host: LabHost, counts: CommandCounts, held: HeldExtender,
                      vm: str) -> list[str]:
    """One ENOSPC pause, its extension held until the monitor has seen all of the pause;
    the commands from the extender's OK to the ``cont``."""
    monitor = host.service.monitor
    held.hold()
    resumes = len(counts.ok_to_cont)
    guest = await host.start_guest(vm, GuestJob(mib=40), start_mib=16, virtual_mib=256)
    await until(lambda: paused(host, vm) == "enospc", 120, "the ENOSPC pause")
    await until(lambda: monitor.idle(extensions=False), 30, "the pause fully seen")
    held.release()
    await until(lambda: len(counts.ok_to_cont) > resumes, 60, "the resume")
    result = await guest.vm.result(timeout=300)
    assert result.verified, result
    return counts.ok_to_cont[resumes]


def counted(host: LabHost, counts: CommandCounts) -> HeldExtender:
    """Count on the host's QMP connections; the extensions pass a HeldExtender (released)."""
    monitor = host.service.monitor
    hv = host.service.hypervisor
    assert isinstance(hv, QmpHypervisor)
    held = HeldExtender(monitor.extender, held=False)
    monitor.extender = held
    counts.attach(hv, monitor)
    return held


async def test_from_the_extenders_ok_to_cont(lab_tmp_path: Path) -> None:
    counts = CommandCounts()
    async with lab_host(workdir=lab_tmp_path, observer=counts, chunk_mib=16,
                        poll_interval_s=600.0, extra=QUIET) as host:
        held = counted(host, counts)
        names = await _ok_to_cont(host, counts, held, "vm1")
        assert len(names) <= 3, names
        # The re-arm, the migration check right before the cont (issue 31: never cont while
        # a migration out runs, ``VmSession.resume``), the cont.
        assert names == ["block-set-write-threshold", "query-migrate", "cont"]
        # The old path (the negative control): a full look between the OK and the cont.
        host.service.monitor.ctx.fast_resume = False
        old = await _ok_to_cont(host, counts, held, "vm2")
        assert len(old) > 3, old
        assert "query-block" in old and old[-1] == "cont"


async def test_from_the_threshold_event_to_the_rearmed_threshold(lab_tmp_path: Path) -> None:
    counts = CommandCounts()
    async with lab_host(workdir=lab_tmp_path, observer=counts, chunk_mib=16,
                        poll_interval_s=600.0, extra=QUIET) as host:
        counted(host, counts)
        job = GuestJob(mib=48, rate_kib_s=4096)  # slow enough never to pause
        guest = await host.start_guest("vm1", job, start_mib=16, virtual_mib=256)
        assert (await guest.vm.result(timeout=300)).verified
        fast = list(counts.event_to_rearm)
        assert len(fast) >= 2
        assert all(w == ["block-set-write-threshold"] for w in fast), fast
        # The old path: the migration probe before every extension.
        host.service.monitor.ctx.fast_resume = False
        guest = await host.start_guest("vm2", job, start_mib=16, virtual_mib=256)
        assert (await guest.vm.result(timeout=300)).verified
        old = counts.event_to_rearm[len(fast):]
        # (At least the probe; under load a window may also hold the old path's full look
        # after the previous extension.)
        assert old and all(w[-1] == "block-set-write-threshold" and "query-status" in w
                           and "query-migrate" in w and len(w) >= 3 for w in old), old
