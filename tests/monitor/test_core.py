"""Monitor behaviour against the in-memory hypervisor (exact sequences, fast)."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskGroup

from autoextend.lab.waiting import until
from autoextend.monitor.core import percentile
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import (
    OutcomeKind,
    PauseReason,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
)
from autoextend.volumes import VolumeRef
from tests.monitor.rig import VOL, Rig


@pytest.fixture
def rig() -> Rig:
    return Rig()


async def test_arms_threshold_on_discovery(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds == [("vm1", "vda", 192 * MiB)])
        assert rig.state() is ThresholdState.SET
        tg.cancel_scope.cancel()


async def test_threshold_event_extends_at_once_and_rearms(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB)  # crosses 192 MiB; no clock advance: no poll
        await until(
            lambda: rig.volumes.sizes[VOL] == 384 * MiB and rig.state() is ThresholdState.SET
        )
        assert rig.hv.thresholds[-1] == ("vm1", "vda", 320 * MiB)
        assert rig.tally.extends == 1 and len(rig.tally.latencies) == 1
        tg.cancel_scope.cancel()


async def test_duplicate_events_extend_once(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.ext.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB)
        for _ in range(5):
            rig.hv.emit(ThresholdCrossed("vm1", "vda", 192 * MiB, 1))
        await until(lambda: rig.state() is ThresholdState.EXTENDING)
        await rig.settle(extensions=False)  # all five events handled; the first still held
        assert rig.ext.calls == 1
        assert rig.monitor.extends_in_flight == 1
        rig.ext.gate.set()
        await until(lambda: rig.state() is ThresholdState.SET)
        assert rig.ext.calls == 1 and rig.monitor.extends_in_flight == 0
        tg.cancel_scope.cancel()


async def test_poll_catches_missed_event(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB, events=False)  # event lost
        await rig.settle()
        assert rig.volumes.sizes[VOL] == 256 * MiB
        rig.clock.advance(1.0)  # one poll
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB)
        tg.cancel_scope.cancel()


async def test_crossed_before_armed_is_extended_on_discovery(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.vms["vm1"].drives["vda"].allocation = 250 * MiB
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB)
        tg.cancel_scope.cancel()


async def _paused_for_space(rig: Rig, tg: TaskGroup) -> anyio.Event:
    """Start the monitor on vm1 and write past its drive's end with the extender held: the VM
    is paused for space and its one extension waits on the gate returned (``rig.ext.gate``)."""
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    gate = rig.ext.gate = anyio.Event()
    await tg.start(rig.monitor.run)
    await until(lambda: rig.state() is ThresholdState.SET)
    rig.hv.write("vm1", "vda", 300 * MiB)  # past the end: ENOSPC + pause
    await until(lambda: rig.tally.enospc_pauses == 1 and rig.ext.calls == 1)
    return gate


async def test_enospc_pause_extends_then_resumes(rig: Rig) -> None:
    async with anyio.create_task_group() as tg:
        gate = await _paused_for_space(rig, tg)
        assert rig.hv.resumes == []
        gate.set()
        await until(lambda: rig.hv.resumes == ["vm1"])
        assert rig.hv.vms["vm1"].running
        assert rig.tally.resumes == 1
        tg.cancel_scope.cancel()


async def test_enospc_needing_two_chunks_resumes_only_when_room(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 450 * MiB)  # needs 256 -> 384 -> 512
        await until(lambda: rig.hv.resumes == ["vm1"])
        assert rig.volumes.sizes[VOL] >= 512 * MiB
        assert rig.hv.vms["vm1"].running
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("reason", [PauseReason.USER, PauseReason.MIGRATION, PauseReason.IO_ERROR])
async def test_other_pauses_are_never_resumed(rig: Rig, reason: PauseReason) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.pause("vm1", reason)
        for _ in range(3):
            await rig.advance(1.0)  # a poll, handled
        assert rig.hv.resumes == []
        assert not rig.hv.vms["vm1"].running
        tg.cancel_scope.cancel()


async def test_drive_at_cap_is_disabled_not_extended(rig: Rig) -> None:
    # capacity 300 MiB -> cap = round_up(330, 4) = 332 MiB
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 300 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.state() is ThresholdState.DISABLED)
        assert rig.volumes.sizes[VOL] == 332 * MiB
        calls = rig.ext.calls
        rig.hv.write("vm1", "vda", 100 * MiB)
        await rig.advance(1.0)
        assert rig.ext.calls == calls
        assert rig.tally.capped >= 1
        tg.cancel_scope.cancel()


async def test_failed_extension_retries_with_backoff(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.ext.fail_with = OutcomeKind.FAILED
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.ext.calls == 1 and rig.state() is ThresholdState.EXCEEDED)
        snap = rig.monitor.snapshot()[0]["drives"][0]
        assert snap["last_error"] == "injected failure" and snap["attempts"] == 1
        await rig.advance(0.2)  # before the retry time: no poll, no retry
        assert rig.ext.calls == 1
        rig.ext.fail_with = None
        rig.clock.advance(1.0)  # poll after retry_at
        # The grown volume, then the drive re-armed (the extension task yields in between).
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB
                    and rig.state() is ThresholdState.SET)
        assert rig.monitor.snapshot()[0]["drives"][0]["last_error"] == ""
        assert rig.tally.failed == 1
        tg.cancel_scope.cancel()


async def test_vm_gone_and_one_broken_vm_does_not_stall_others(rig: Rig) -> None:
    other = VolumeRef("vg0", "lv2")
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.add_vm("vm2", {"vda": (other, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: len(rig.hv.thresholds) == 2)
        del rig.hv.vms["vm1"]  # queries for vm1 now fail (broken VM)
        rig.clock.advance(1.0)
        rig.hv.write("vm2", "vda", 200 * MiB)
        await until(lambda: rig.volumes.sizes[other] == 384 * MiB)
        rig.hv.emit(VmGone("vm1"))
        await until(lambda: [v["vm"] for v in rig.monitor.snapshot()] == ["vm2"])
        tg.cancel_scope.cancel()


async def test_dry_run_extends_and_resumes_nothing() -> None:
    rig = Rig(dry_run=True)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await rig.settle()
        assert rig.hv.thresholds == []
        rig.hv.write("vm1", "vda", 300 * MiB)
        await rig.advance(1.0)
        assert rig.ext.calls == 0 and rig.volumes.sizes[VOL] == 256 * MiB
        assert rig.hv.resumes == []
        tg.cancel_scope.cancel()


async def test_rearm_failure_does_not_extend_twice(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.fail_set_threshold = True
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB)
        await until(lambda: rig.state() is ThresholdState.UNSET)
        rig.hv.fail_set_threshold = False
        rig.clock.advance(1.0)
        await until(lambda: rig.state() is ThresholdState.SET)
        assert rig.volumes.sizes[VOL] == 384 * MiB and rig.ext.calls == 1
        tg.cancel_scope.cancel()


def test_percentile() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 1) == 1.0


async def test_a_failing_vm_warns_once_per_outage(rig: Rig) -> None:
    from structlog.testing import capture_logs

    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        record = rig.hv.vms.pop("vm1")  # every query now fails (hypervisor down)
        with capture_logs() as logs:
            for _ in range(4):
                await rig.advance(1.0)
            rig.hv.vms["vm1"] = record  # back
            rig.clock.advance(1.0)
            await until(lambda: any(e["event"] == "vm check recovered" for e in logs))
        failed = [e for e in logs if e["event"] == "vm check failed"]
        assert [e["log_level"] for e in failed].count("warning") == 1
        assert len(failed) >= 3
        tg.cancel_scope.cancel()


async def test_idle_is_false_until_events_polls_and_extensions_are_handled(rig: Rig) -> None:
    """The synchronisation point of the "nothing happened" tests cannot be trivially true."""
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    assert not rig.monitor.idle()  # not running yet
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await rig.settle()
        assert rig.state() is ThresholdState.SET
        rig.hv.emit(VmAppeared("vm1"))  # an event not yet routed
        assert not rig.monitor.idle()
        await rig.settle()
        rig.clock.advance(1.0)  # a poll is due, not yet run
        assert not rig.monitor.idle()
        await rig.settle()
        rig.ext.gate = anyio.Event()
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.state() is ThresholdState.EXTENDING)
        await rig.settle(extensions=False)
        assert not rig.monitor.idle()  # the extension is in flight
        rig.ext.gate.set()
        await rig.settle()
        assert rig.volumes.sizes[VOL] == 384 * MiB and rig.state() is ThresholdState.SET
        tg.cancel_scope.cancel()


async def test_vm_back_after_lost_connection_mid_extension_is_resumed_once(rig: Rig) -> None:
    """The monitor connection drops while a VM paused for space waits on its extension, and
    comes back (QEMU lived on): the VM is taken up again, extended and resumed exactly once."""
    async with anyio.create_task_group() as tg:
        gate = await _paused_for_space(rig, tg)
        rig.hv.emit(VmGone("vm1"))
        await until(lambda: rig.monitor.snapshot() == [])
        assert rig.monitor.extends_in_flight == 0
        rig.hv.emit(VmAppeared("vm1"))  # reconnected: still paused for space
        await until(lambda: [v["vm"] for v in rig.monitor.snapshot()] == ["vm1"])
        gate.set()
        await until(lambda: rig.hv.resumes == ["vm1"])
        await rig.settle()  # idle: no extension counted in flight twice or left over
        assert rig.hv.resumes == ["vm1"] and rig.hv.vms["vm1"].running
        assert rig.volumes.sizes[VOL] >= 384 * MiB
        assert rig.monitor.extends_in_flight == 0
        tg.cancel_scope.cancel()
