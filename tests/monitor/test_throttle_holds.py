"""The throttle's hold file (``monitor/holds.py``): a limit left on a drive by a service
that died while it throttled is given back at the next start, unless someone changed the
drive's limits meanwhile; a vanished VM drops its record; a corrupt file is a warning.

The death is injected with a hypervisor wrapper that stops answering (as a killed
service's connections do): the stopping monitor cannot lift its limit, as after SIGKILL.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from autoextend.lab.waiting import until
from autoextend.monitor import holds
from autoextend.monitor.core import Monitor
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.memory import MemoryHypervisor
from autoextend.monitor.migration import MigrationInfo
from autoextend.monitor.protocols import (
    IO_LIMIT_FIELDS,
    DriveInfo,
    HypervisorDisconnected,
    HypervisorEvent,
    HypervisorHealth,
    IoLimits,
    RunState,
    VmAppeared,
)
from autoextend.monitor.throttle import MiB
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, VOL, Rig

THEIRS = IoLimits.of({"iops": 500, "bps_rd": 300 * MiB}, group="g1")


class Dying:
    """The in-memory hypervisor, until :attr:`dead`: then every limit call fails as a
    lost connection does (the monitor's stop cannot lift what it set)."""

    def __init__(self, hv: MemoryHypervisor) -> None:
        self.hv = hv
        self.dead = False
        self.drive_reads = 0

    def _check(self) -> None:
        if self.dead:
            raise HypervisorDisconnected("the service is being killed")

    async def run(self, events: MemoryObjectSendStream[HypervisorEvent], *,
                  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.hv.run(events, task_status=task_status)

    async def drives(self, vm: str) -> list[DriveInfo]:
        self._check()
        self.drive_reads += 1
        return await self.hv.drives(vm)

    async def set_threshold(self, vm: str, drive: DriveInfo, threshold: int) -> None:
        await self.hv.set_threshold(vm, drive, threshold)

    async def run_state(self, vm: str) -> RunState:
        return await self.hv.run_state(vm)

    async def resume(self, vm: str) -> None:
        await self.hv.resume(vm)

    async def kill(self, vm: str) -> None:
        await self.hv.kill(vm)

    async def suspend(self, vm: str) -> None:
        await self.hv.suspend(vm)

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        return self.hv.volume_of(drive)

    async def migration(self, vm: str) -> MigrationInfo:
        return await self.hv.migration(vm)

    async def outgoing_migration(self, vm: str) -> bool:
        return await self.hv.outgoing_migration(vm)

    def health(self) -> HypervisorHealth:
        return self.hv.health()

    async def io_limits(self, vm: str, drive: DriveInfo) -> IoLimits:
        self._check()
        return await self.hv.io_limits(vm, drive)

    async def set_io_limits(self, vm: str, drive: DriveInfo, limits: IoLimits) -> None:
        self._check()
        await self.hv.set_io_limits(vm, drive, limits)


def limits(rig: Rig) -> IoLimits:
    return rig.hv.vms["vm1"].drives["vda"].limits


def recorded(path: Path) -> list[holds.HoldRecord]:
    return holds.decode(path.read_text())


async def sampled_at_100_mib_s(rig: Rig, monitor: Monitor) -> None:
    """Once vm1's vda is armed, the guest writes 100 MiB in one poll (a rate the throttle
    acts on); the monitor has taken the sample in."""
    await until(lambda: state(monitor) is ThresholdState.SET)
    rig.hv.write("vm1", "vda", 100 * MiB, events=False)
    rig.clock.advance(1.0)  # a poll samples 100 MiB in 1 s
    await until(lambda: monitor.idle(), describe=rig.describe)


async def killed_while_throttled(rig: Rig, path: Path) -> IoLimits:
    """Run a monitor that throttles vm1's vda, then dies without lifting it; the limit
    it left on the drive."""
    dying = Dying(rig.hv)
    monitor = Monitor(dying, rig.ext, SETTINGS, rig.clock, throttle_holds=str(path))
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        await sampled_at_100_mib_s(rig, monitor)
        rig.ext.gate = anyio.Event()  # the extension never lands
        rig.hv.write("vm1", "vda", 100 * MiB)
        await until(lambda: monitor.throttles.held, describe=rig.describe)
        dying.dead = True
        tg.cancel_scope.cancel()
    rig.ext.gate = None
    left = limits(rig)
    assert left != THEIRS and 0 < left.get("bps_wr") < 100 * MiB
    (rec,) = recorded(path)
    assert (rec.vm, rec.drive, rec.original, rec.applied) == ("vm1", "vda", THEIRS, left)
    return left


async def restart(rig: Rig, path: Path) -> Monitor:
    """A new monitor over the same guests and hold file (not started)."""
    return Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, throttle_holds=str(path))


def state(monitor: Monitor) -> ThresholdState | None:
    for v in monitor.snapshot():
        for d in v["drives"]:
            if v["vm"] == "vm1" and d["drive"] == "vda":
                return ThresholdState(d["state"])
    return None


def rig_with_guest() -> Rig:
    rig = Rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.vms["vm1"].drives["vda"].limits = THEIRS
    return rig


async def run_until(monitor: Monitor, done: object) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        await until(done, describe=lambda: monitor.snapshot())  # type: ignore[arg-type]
        tg.cancel_scope.cancel()


async def test_a_limit_left_by_a_killed_service_is_lifted_at_the_next_start(
        tmp_path: Path) -> None:
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    await killed_while_throttled(rig, path)
    monitor = await restart(rig, path)
    with capture_logs() as logs:
        await run_until(monitor, lambda: limits(rig) == THEIRS)
    assert recorded(path) == []
    assert any("previous run left" in e["event"] and e["vm"] == "vm1" and e["drive"] == "vda"
               for e in logs)


async def test_limits_changed_while_the_service_was_down_are_kept(tmp_path: Path) -> None:
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    await killed_while_throttled(rig, path)
    operator = IoLimits.of({"bps_wr": 7 * MiB})
    rig.hv.vms["vm1"].drives["vda"].limits = operator
    calls = len(rig.hv.limit_calls)
    monitor = await restart(rig, path)
    with capture_logs() as logs:
        await run_until(monitor, lambda: recorded(path) == [])
    assert limits(rig) == operator and len(rig.hv.limit_calls) == calls
    assert any(e["log_level"] == "warning" and "changed" in e["event"] for e in logs)


async def test_a_vanished_vm_drops_its_record(tmp_path: Path) -> None:
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    await killed_while_throttled(rig, path)
    del rig.hv.vms["vm1"]  # gone while no service ran (no event to anyone)
    calls = len(rig.hv.limit_calls)
    await run_until(await restart(rig, path), lambda: recorded(path) == [])
    assert len(rig.hv.limit_calls) == calls


async def test_a_vm_behind_an_unanswering_socket_keeps_its_record_until_it_connects(
        tmp_path: Path) -> None:
    """At the restart the VM is not found, but the hypervisor has a VM it cannot name (a
    QMP socket someone else holds): the record is kept, not dropped, and the limits are
    given back once the VM connects."""
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    left = await killed_while_throttled(rig, path)
    vm = rig.hv.vms.pop("vm1")  # not connected at the restart...
    rig.hv.unidentified = 1  # ...but a socket answers to no one yet
    monitor = await restart(rig, path)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            await until(lambda: any("cannot name" in e["event"] for e in logs))
            assert [r.vm for r in recorded(path)] == ["vm1"]
            rig.hv.unidentified = 0
            rig.hv.vms["vm1"] = vm
            assert limits(rig) == left
            rig.hv.emit(VmAppeared("vm1"))  # it connects
            await until(lambda: limits(rig) == THEIRS and recorded(path) == [],
                        describe=lambda: (limits(rig), recorded(path)))
            tg.cancel_scope.cancel()
    (kept,) = [e for e in logs if "cannot name" in e["event"]]
    assert kept["log_level"] == "warning" and kept["vm"] == "vm1" and kept["unidentified"] == 1
    assert not any("record dropped" in e["event"] for e in logs)


async def test_a_vm_not_found_with_every_socket_named_drops_its_record(
        tmp_path: Path) -> None:
    """The negative control: the same restart with no unnamed VM drops the record (the VM
    is gone), and a VM connecting later finds no record to act on."""
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    left = await killed_while_throttled(rig, path)
    vm = rig.hv.vms.pop("vm1")
    book = holds.HoldFile(str(path))
    await holds.recover(book, rig.hv, dry_run=False)
    assert recorded(path) == [] and not book.unsettled
    rig.hv.vms["vm1"] = vm
    await holds.recheck(book, rig.hv, dry_run=False)
    assert limits(rig) == left


async def test_vms_connecting_while_a_recheck_waits_share_its_pass(tmp_path: Path) -> None:
    """Many VMs connect at once at start-up: each asks for a recheck, but those that come
    while one waits for its pass need none of their own: one look at the record, still
    kept (its VM is still behind a socket no one can name)."""
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    await killed_while_throttled(rig, path)
    vm = rig.hv.vms.pop("vm1")
    rig.hv.unidentified = 1
    book = holds.HoldFile(str(path))
    await holds.recover(book, rig.hv, dry_run=False)
    assert book.unsettled == {("vm1", "vda")}
    counting = Dying(rig.hv)
    async with anyio.create_task_group() as tg:
        async with book.settling:  # a pass (the start-up check) still runs
            for _ in range(5):
                tg.start_soon(holds.recheck, book, counting, False)
            await until(lambda: book.recheck_queued)
            await anyio.sleep(0.05)  # time is the subject: the other four get to ask
    assert counting.drive_reads == 1 and book.unsettled == {("vm1", "vda")}
    assert [r.vm for r in recorded(path)] == ["vm1"] and vm.drives["vda"].limits != THEIRS


@pytest.mark.parametrize("text", ["{not json", '{"version": 9, "holds": []}',
                                  '{"version": 1, "holds": [{"vm": 1}]}'])
async def test_a_corrupt_hold_file_is_a_warning_not_a_crash(tmp_path: Path,
                                                            text: str) -> None:
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    path.write_text(text)
    monitor = await restart(rig, path)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            await until(lambda: any("unreadable" in e["event"] for e in logs))
            tg.cancel_scope.cancel()
    (warning,) = [e for e in logs if "unreadable" in e["event"]]
    assert warning["log_level"] == "warning" and warning["path"] == str(path)
    assert limits(rig) == THEIRS and rig.hv.limit_calls == []


async def test_a_clean_lift_strikes_the_record_out(tmp_path: Path) -> None:
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    monitor = await restart(rig, path)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        await until(lambda: state(monitor) is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 100 * MiB, events=False)
        rig.clock.advance(1.0)
        await until(lambda: monitor.idle(), describe=rig.describe)
        rig.ext.gate = gate = anyio.Event()
        rig.hv.write("vm1", "vda", 100 * MiB)
        await until(lambda: monitor.throttles.held, describe=rig.describe)
        assert [r.key for r in recorded(path)] == [("vm1", "vda")]  # before it lands
        gate.set()
        await until(lambda: not monitor.throttles.held, describe=rig.describe)
        tg.cancel_scope.cancel()
    assert limits(rig) == THEIRS and recorded(path) == []


async def test_a_hold_not_checkable_at_start_is_kept_and_adopted(tmp_path: Path) -> None:
    """The hypervisor did not answer at the start-up check: the record is kept, and a new
    throttle of the drive takes the drive's own limits from it (not the old limit)."""
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    left = await killed_while_throttled(rig, path)
    dying = Dying(rig.hv)
    dying.dead = True
    book = holds.HoldFile(str(path))
    await holds.recover(book, dying, dry_run=False)
    assert limits(rig) == left and len(recorded(path)) == 1
    assert book.adopt("vm1", "vda", left) == THEIRS
    assert book.adopt("vm1", "vda", IoLimits.of({"iops": 1})) == IoLimits.of({"iops": 1})
    assert book.adopt("vm1", "vdb", left) == left


limit_values = st.dictionaries(st.sampled_from(IO_LIMIT_FIELDS),
                               st.integers(min_value=0, max_value=1 << 50), max_size=5)
names = st.text(min_size=1, max_size=12)


@given(st.lists(st.builds(
    holds.HoldRecord, names, names, names,
    st.builds(IoLimits.of, limit_values, names | st.just("")),
    st.builds(IoLimits.of, limit_values, names | st.just(""))), max_size=4))
def test_records_round_trip(records: list[holds.HoldRecord]) -> None:
    assert holds.decode(holds.encode(records)) == records


@pytest.mark.parametrize("doc", [[], {"version": 1}, {"version": 1, "holds": [
    {"vm": "a", "drive": "b", "volume": "c", "original": {"values": {"nope": 1}},
     "applied": {"values": {}}}]}, {"version": 1, "holds": [
    {"vm": "a", "drive": "b", "volume": "c", "original": {"values": {"bps": "1"}},
     "applied": {"values": {}}}]}])
def test_a_malformed_document_is_a_clear_error(doc: object) -> None:
    with pytest.raises(ValueError, match="version|holds|hold 0"):
        holds.decode(json.dumps(doc))


async def test_a_limit_whose_extension_answers_while_it_is_written_down_is_not_set(
        tmp_path: Path) -> None:
    """The bench saw it: the watch writes its record down, and the extension answers
    meanwhile. The set would go out after the extender's OK, only to be lifted at the
    re-arm (two commands before the cont). It is not sent, and its record is struck out."""
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, throttle_holds=str(path))
    book = monitor.throttles.holds
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        await sampled_at_100_mib_s(rig, monitor)
        rig.ext.gate = gate = anyio.Event()
        async with book._lock:  # the record's write is slow
            rig.hv.write("vm1", "vda", 100 * MiB)  # crosses: the extension and its watch
            await until(lambda: book.records, describe=rig.describe)  # written down next
            gate.set()  # the extension answers before the record is on disk
            await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB)
            await anyio.sleep(0.05)  # time is the subject: the answer reaches the watch
        await until(lambda: monitor.idle() and not book.records, describe=rig.describe)
        assert rig.hv.limit_calls == [] and limits(rig) == THEIRS
        assert recorded(path) == [] and not monitor.throttles.held
        tg.cancel_scope.cancel()


class RecordAtStart(Dying):
    """Writes ``record`` into the hold file as the hypervisor starts: a record this run
    wrote, in the file before the start-up check reads it if that check reads late."""

    def __init__(self, hv: MemoryHypervisor, path: Path, record: holds.HoldRecord) -> None:
        super().__init__(hv)
        self.path = path
        self.record = record

    async def run(self, events: MemoryObjectSendStream[HypervisorEvent], *,
                  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.path.write_text(holds.encode([self.record]))
        await super().run(events, task_status=task_status)


async def test_the_start_up_check_never_takes_this_runs_record_for_a_previous_runs(
        tmp_path: Path) -> None:
    """The start-up check reads the hold file before this run can throttle a drive. It used
    to read it in a task started beside the running monitor: under load (make test beside a
    CPU hog) the read came after the throttle had written down a limit it was setting, and
    the check lifted that fresh limit as "a limit a previous run left". Here this run's
    record appears as the hypervisor starts, the point the old read came after: the limit
    stays, and so does its record."""
    rig = rig_with_guest()
    path = tmp_path / "holds.json"
    mine = THEIRS.with_write_bps(10 * MiB)
    rig.hv.vms["vm1"].drives["vda"].limits = mine  # set by this run
    record = holds.HoldRecord("vm1", "vda", str(VOL), THEIRS, mine)
    monitor = Monitor(RecordAtStart(rig.hv, path, record), rig.ext, SETTINGS, rig.clock,
                      throttle_holds=str(path))
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            await until(lambda: monitor.idle(), describe=rig.describe)
            await anyio.wait_all_tasks_blocked()  # the start-up check has run to its end
            assert limits(rig) == mine
            tg.cancel_scope.cancel()
    assert recorded(path) == [record]
    assert not any("previous run" in str(e.get("event")) for e in logs), logs
