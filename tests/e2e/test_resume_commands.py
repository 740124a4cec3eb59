"""Issue 30 item 5 on real guests (QMP, local extender): how many QMP commands the monitor
sends from the extender's OK to ``cont`` (at most 3), and from a threshold event to the
re-armed threshold (1, no migration known), counted on the QMP connection itself
(``QmpConnection.recent``). Each count is held against the old path
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
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.waiting import until
from autoextend.monitor.observer import ExtendFinished, MonitorEvent, Resumed
from autoextend.monitor.protocols import ExtendOutcome
from autoextend.qmp.connection import commands_after
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import VolumeRef
from tests.doubles import HeldExtender

pytestmark = pytest.mark.slow
MiB = 1 << 20
QUIET = {"qmp": {"drive_watch_interval_s": 3600.0}}  # no drive-set poll in the window


class Counts:
    """An observer that reads the VM's QMP trace at each resume and each extension's end."""

    def __init__(self) -> None:
        self.hv: QmpHypervisor | None = None
        self.at_resume: list[int] = []
        self.rearm_windows: list[list[str]] = []
        self.resume_windows: list[list[str]] = []

    def notify(self, event: MonitorEvent) -> None:
        if self.hv is None:
            return
        if isinstance(event, Resumed) and event.automatic:
            count, trace = self.hv.commands_sent(event.vm)
            self.at_resume.append(count)
            self.resume_windows.append([name for kind, name in trace if kind == "command"])
        elif isinstance(event, ExtendFinished) and "rearm" in event.phases:
            _, trace = self.hv.commands_sent(event.vm)
            self.rearm_windows.append(commands_after(trace, "BLOCK_WRITE_THRESHOLD"))


class MarkOk:
    """An extender that notes the VM's QMP command count when its inner extender says OK."""

    def __init__(self, inner: HeldExtender, hv: QmpHypervisor, vm: str) -> None:
        self.inner, self.hv, self.vm = inner, hv, vm
        self.at_ok: list[int] = []

    async def extend(self, volume: VolumeRef, size: int, *, refresh: bool = True
                     ) -> ExtendOutcome:
        outcome = await self.inner.extend(volume, size, refresh=refresh)
        if outcome.ok:
            self.at_ok.append(self.hv.commands_sent(self.vm)[0])
        return outcome


def paused(host: LabHost, vm: str) -> Any:
    return next((v["paused"] for v in host.service.monitor.snapshot() if v["vm"] == vm), None)


async def _ok_to_cont(host: LabHost, counts: Counts, vm: str) -> tuple[int, list[str]]:
    """One ENOSPC pause, its extension held until the monitor has seen all of the pause;
    the commands from the extender's OK to the ``cont``, and their names."""
    monitor = host.service.monitor
    hv = host.service.hypervisor
    assert isinstance(hv, QmpHypervisor)
    held = HeldExtender(monitor.extender if not isinstance(monitor.extender, MarkOk)
                        else monitor.extender.inner.inner)
    mark = MarkOk(held, hv, vm)
    monitor.extender = mark
    resumes = len(counts.at_resume)
    guest = await host.start_guest(vm, GuestJob(mib=40), start_mib=16, virtual_mib=256)
    await until(lambda: paused(host, vm) == "enospc", 120, "the ENOSPC pause")
    await until(lambda: monitor.idle(extensions=False), 30, "the pause fully seen")
    held.release()
    await until(lambda: len(counts.at_resume) > resumes, 60, "the resume")
    window = counts.at_resume[resumes] - mark.at_ok[0]
    names = counts.resume_windows[resumes][-window:]
    result = await guest.vm.result(timeout=300)
    assert result.verified, result
    return window, names


async def test_from_the_extenders_ok_to_cont(lab_tmp_path: Path) -> None:
    counts = Counts()
    async with lab_host(workdir=lab_tmp_path, observer=counts, chunk_mib=16,
                        poll_interval_s=600.0, extra=QUIET) as host:
        hv = host.service.hypervisor
        assert isinstance(hv, QmpHypervisor)
        counts.hv = hv
        window, names = await _ok_to_cont(host, counts, "vm1")
        assert window <= 3, names
        assert names == ["block-set-write-threshold", "cont"], (window, names)
        # The old path (the negative control): a full look between the OK and the cont.
        host.service.monitor.ctx.fast_resume = False
        old, old_names = await _ok_to_cont(host, counts, "vm2")
        assert old > 3, old_names
        assert "query-block" in old_names and old_names[-1] == "cont"


async def test_from_the_threshold_event_to_the_rearmed_threshold(lab_tmp_path: Path) -> None:
    counts = Counts()
    async with lab_host(workdir=lab_tmp_path, observer=counts, chunk_mib=16,
                        poll_interval_s=600.0, extra=QUIET) as host:
        hv = host.service.hypervisor
        assert isinstance(hv, QmpHypervisor)
        counts.hv = hv
        job = GuestJob(mib=48, rate_kib_s=4096)  # slow enough never to pause
        guest = await host.start_guest("vm1", job, start_mib=16, virtual_mib=256)
        assert (await guest.vm.result(timeout=300)).verified
        fast = list(counts.rearm_windows)
        assert len(fast) >= 2
        assert all(w == ["block-set-write-threshold"] for w in fast), fast
        # The old path: the migration probe before every extension.
        host.service.monitor.ctx.fast_resume = False
        guest = await host.start_guest("vm2", job, start_mib=16, virtual_mib=256)
        assert (await guest.vm.result(timeout=300)).verified
        old = counts.rearm_windows[len(fast):]
        assert old and all(w == ["query-status", "query-migrate", "block-set-write-threshold"]
                           for w in old), old
