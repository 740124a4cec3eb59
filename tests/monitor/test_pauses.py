"""Who resumes what: unmanaged ENOSPC pauses, I/O-error pauses by policy, contained failures.

Against the in-memory hypervisor (exact sequences, a manual clock, a scripted probe). The
real guests are in tests/qmp/test_pauses_guest.py and tests/libvirt_backend.
"""

from __future__ import annotations

import anyio
from structlog.testing import capture_logs

from autoextend.lab.waiting import until
from autoextend.monitor.config import ResumeOverride, ResumeSettings
from autoextend.monitor.core import Monitor
from autoextend.monitor.memory import MemoryDrive
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import DriveIoError, PauseReason
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, Rig

VOL = VolumeRef("vg0", "lv1")
VOL2 = VolumeRef("vg0", "lv2")
UNMANAGED_VDB = DriveIoError("vdb", "/dev/loop9", nospace=True)


class Probe:
    def __init__(self) -> None:
        self.ok = True
        self.calls: list[str] = []

    async def __call__(self, path: str) -> bool:
        self.calls.append(path)
        return self.ok


def make_rig(
    resume: ResumeSettings | None = None, lease_ok: bool | None = None
) -> tuple[Rig, Probe]:
    rig = Rig()
    probe = Probe()
    rig_lease: list[bool] = [bool(lease_ok)]
    lease = None if lease_ok is None else (lambda: rig_lease[0])
    rig.lease = rig_lease  # type: ignore[attr-defined]
    rig.monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, observer=rig.tally,
                          resume=resume or ResumeSettings(), probe=probe, lease_ok=lease)
    return rig, probe


def vm_status(rig: Rig, vm: str = "vm1") -> dict[str, object]:
    return next(v for v in rig.monitor.snapshot() if v["vm"] == vm)


async def settle(rig: Rig, seconds: float, step: float = 0.5) -> None:
    """Let manual time pass in steps; after each, wait until the monitor is idle."""
    t = 0.0
    while t < seconds:
        await rig.advance(step)
        t += step


async def test_enospc_on_unmanaged_drive_is_never_resumed() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await until(lambda: rig.hv.thresholds != [])
            rig.hv.pause("vm1", PauseReason.ENOSPC, (UNMANAGED_VDB,))
            await until(lambda: vm_status(rig)["paused"] == "enospc, unmanaged vdb")
            await settle(rig, 20.0)  # 20 polls
            assert rig.hv.resumes == []
            assert rig.tally.unmanaged == 1
            # grown by hand: io-status still says nospace until someone resumes; still ours not
            rig.hv.vms["vm1"].errors = ()
            await settle(rig, 5.0)
            assert rig.hv.resumes == []
            assert vm_status(rig)["state"] == "paused-enospc-unmanaged"
            tg.cancel_scope.cancel()
    warnings = [e for e in logs if e["log_level"] == "warning" and "does not manage" in e["event"]]
    assert len(warnings) == 1
    assert warnings[0]["vm"] == "vm1" and warnings[0]["drive"] == "vdb"
    assert warnings[0]["path"] == "/dev/loop9"


async def test_managed_and_unmanaged_together_extends_but_stays_paused() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [])
        rig.hv.write("vm1", "vda", 300 * MiB, events=False)  # past the end: no room
        rig.hv.pause("vm1", PauseReason.ENOSPC,
                     (DriveIoError("vda", "/dev/vg0/lv1", True), UNMANAGED_VDB))
        await until(lambda: rig.volumes.sizes[VOL] > 300 * MiB)
        await settle(rig, 10.0)
        assert rig.hv.resumes == []
        assert vm_status(rig)["paused"] == "enospc, unmanaged vdb"
        tg.cancel_scope.cancel()


async def test_operator_resume_clears_unmanaged_state() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        rig.hv.pause("vm1", PauseReason.ENOSPC, (UNMANAGED_VDB,))
        await until(lambda: vm_status(rig)["state"] == "paused-enospc-unmanaged")
        await rig.hv.resume("vm1")  # the operator
        await until(lambda: vm_status(rig)["paused"] is None)
        assert rig.tally.resumes == 0
        tg.cancel_scope.cancel()


def io_error(rig: Rig) -> None:
    rig.hv.pause("vm1", PauseReason.IO_ERROR, (DriveIoError("vda", "/dev/vg0/lv1", False),))


async def test_io_error_auto_resumes_after_two_good_probes() -> None:
    rig, probe = make_rig(ResumeSettings(policy="auto"))
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        probe.ok = False
        io_error(rig)
        await until(lambda: vm_status(rig)["paused"] == "io-error")
        await settle(rig, 10.0)
        assert rig.hv.resumes == [] and probe.calls  # probed, failing: stays paused
        assert set(probe.calls) == {"/dev/vg0/lv1"}
        probe.ok = True
        n = len(probe.calls)
        await settle(rig, 3.0)
        await until(lambda: rig.hv.resumes == ["vm1"])
        assert len(probe.calls) >= n + 2
        assert rig.tally.io_error_resumes == 1
        tg.cancel_scope.cancel()


async def test_io_error_that_keeps_failing_is_resumed_with_backoff() -> None:
    rig, _ = make_rig(ResumeSettings(policy="auto"))
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    times: list[float] = []
    real_resume = rig.hv.resume

    async def failing_resume(vm: str) -> None:
        times.append(rig.clock.now())
        await real_resume(vm)
        io_error(rig)  # fails again at once

    rig.hv.resume = failing_resume  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        io_error(rig)
        await settle(rig, 40.0, step=0.25)
        tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) >= 4
    assert all(g >= 1.0 for g in gaps)  # never two conts in one backoff step
    assert gaps == sorted(gaps) and gaps[-1] <= 30.0 + 2.0


async def test_io_error_leave_never_resumes() -> None:
    rig, probe = make_rig(ResumeSettings(policy="leave"))
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        io_error(rig)
        await until(lambda: vm_status(rig)["paused"] == "io-error")
        await settle(rig, 40.0)
        assert rig.hv.resumes == [] and rig.hv.kills == []
        tg.cancel_scope.cancel()


async def test_io_error_kill_after_timeout_per_vm_override() -> None:
    resume = ResumeSettings(policy="leave",
                            overrides=(ResumeOverride(vm="vm1", policy="kill", kill_after_s=3.0),))
    rig, probe = make_rig(resume)
    probe.ok = False
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.add_vm("vm2", {"vda": (VOL2, 256 * MiB, 1024 * MiB)})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            io_error(rig)
            rig.hv.pause("vm2", PauseReason.IO_ERROR, (DriveIoError("vda", "/dev/vg0/lv2", False),))
            await until(lambda: vm_status(rig)["paused"] == "io-error")
            await settle(rig, 2.0)
            assert rig.hv.kills == []
            await settle(rig, 2.0)
            await until(lambda: rig.hv.kills == ["vm1"])
            await settle(rig, 10.0)
            assert rig.hv.kills == ["vm1"] and rig.hv.resumes == []  # vm2: leave
            tg.cancel_scope.cancel()
    kills = [e for e in logs if e["event"] == "killing vm"]
    assert kills and "3 s" in kills[0]["reason"]
    assert rig.tally.kills == 1


async def test_a_failing_kill_is_retried_and_counted_once() -> None:
    rig, probe = make_rig(ResumeSettings(policy="kill", kill_after_s=3.0))
    probe.ok = False
    rig.hv.fail_kills = 2  # destroy fails twice (QEMU stuck on the failing storage)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        io_error(rig)
        await until(lambda: vm_status(rig)["paused"] == "io-error")
        await settle(rig, 4.0)
        await until(lambda: rig.hv.kills == ["vm1"])
        await settle(rig, 10.0)
        tg.cancel_scope.cancel()
    assert rig.hv.kills == ["vm1"] and rig.hv.fail_kills == 0
    assert rig.tally.kills == 1  # one decision, counted once


async def test_no_resume_while_lease_invalid() -> None:
    rig, probe = make_rig(ResumeSettings(policy="auto"), lease_ok=False)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        io_error(rig)
        await until(lambda: vm_status(rig)["paused"] == "io-error")
        await settle(rig, 10.0)
        assert rig.hv.resumes == []
        rig.lease[0] = True  # type: ignore[attr-defined]
        await settle(rig, 3.0)
        await until(lambda: rig.hv.resumes == ["vm1"])
        tg.cancel_scope.cancel()


async def test_migration_and_operator_pauses_are_never_resumed() -> None:
    rig, _ = make_rig(ResumeSettings(policy="auto"))
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.add_vm("vm2", {"vda": (VOL2, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        rig.hv.pause("vm1", PauseReason.MIGRATION)
        rig.hv.pause("vm2", PauseReason.USER)
        await settle(rig, 10.0)
        assert rig.hv.resumes == []
        tg.cancel_scope.cancel()


async def test_exception_in_one_vm_is_contained_and_retried() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.add_vm("bad", {"vda": (VOL2, 256 * MiB, 1024 * MiB)})
    # an absurd virtual size: the cap math overflows a float
    rig.hv.vms["bad"].drives["vda"] = MemoryDrive(VOL2, 10**400)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.tally.check_failures >= 1)
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB)  # the other VM is served
        n = rig.tally.check_failures
        await settle(rig, 10.0)
        assert n < rig.tally.check_failures <= n + 8  # retried, with backoff (not every poll)
        rig.hv.vms["bad"].drives["vda"] = MemoryDrive(VOL2, 1024 * MiB)
        await settle(rig, 5.0)
        await until(lambda: any(t[0] == "bad" for t in rig.hv.thresholds))
        tg.cancel_scope.cancel()


async def test_enospc_pause_on_no_known_drive_is_left_paused() -> None:
    """The hypervisor names no drive and none of ours is full: not autoextend's pause."""
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await until(lambda: rig.hv.thresholds != [])
            rig.hv.pause("vm1", PauseReason.ENOSPC)
            await until(lambda: vm_status(rig)["paused"] == "enospc")
            await settle(rig, 10.0)
            assert rig.hv.resumes == []
            tg.cancel_scope.cancel()
    assert len([e for e in logs if "no drive autoextend manages" in e["event"]]) == 1


async def test_enospc_named_managed_drive_is_extended_and_resumed_once() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [])
        # A write ran past the end: QEMU fired (and disarmed) the threshold first, and its
        # event was lost. (With the threshold still armed this would be an ENOSPC with
        # room, never extended: tests/monitor/test_backing.py.)
        rig.hv.vms["vm1"].drives["vda"].threshold = 0
        rig.hv.pause("vm1", PauseReason.ENOSPC, (DriveIoError("vda", "/dev/vg0/lv1", True),))
        await until(lambda: rig.hv.resumes == ["vm1"])
        assert rig.volumes.sizes[VOL] > 256 * MiB  # extended before the resume
        await settle(rig, 5.0)
        assert rig.hv.resumes == ["vm1"]
        tg.cancel_scope.cancel()
