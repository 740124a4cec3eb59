"""Outgoing migrations from libvirt's events (``libvirt_backend/outgoing.py``): the marks,
the tracker's callbacks, and ``LibvirtHypervisor.migration`` answering from a mark while
``jobStats`` waits (a stand-in connection whose ``jobStats`` blocks, as it does behind a
real migration's job; the real one is in test_migration_live.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.clock import MonotonicClock
from autoextend.lab.waiting import until
from autoextend.libvirt_backend.config import LibvirtSettings
from autoextend.libvirt_backend.errors import LibvirtTimeout
from autoextend.libvirt_backend.hypervisor import LibvirtHypervisor
from autoextend.libvirt_backend.outgoing import OutgoingMarks
from autoextend.libvirt_backend.tracker import DomainTracker
from autoextend.monitor.migration import NOT_MIGRATING, MigrationInfo, Phase, Role
from autoextend.monitor.protocols import HypervisorEvent, MigrationChanged

E = libvirt
CONN = object()
OUT = MigrationInfo(Role.SOURCE, Phase.ACTIVE)


class Dom:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


def tracker() -> tuple[DomainTracker, list[HypervisorEvent]]:
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](64)
    t = DomainTracker()
    t.events = send
    t.current = CONN
    seen: list[HypervisorEvent] = []

    def drain() -> list[HypervisorEvent]:
        while True:
            try:
                seen.append(receive.receive_nowait())
            except anyio.WouldBlock:
                return seen

    t.drain = drain  # type: ignore[attr-defined]
    return t, seen


def test_marks_set_clear_and_stale_verify() -> None:
    marks = OutgoingMarks()
    assert marks.get("vm1") is None
    assert marks.set("vm1") is True
    first = marks.get("vm1")
    assert marks.set("vm1") is False  # a later pass: already marked, newer number
    second = marks.get("vm1")
    assert first is not None and second is not None and second > first
    assert marks.clear("vm1", first) is False  # a verify that saw the older mark keeps it
    assert marks.get("vm1") == second
    assert marks.clear("vm1", second) is True
    assert marks.clear("vm1") is False
    marks.set("vm2")
    marks.clear_all()
    assert marks.get("vm2") is None


async def test_marks_wait_wakes_on_set() -> None:
    marks = OutgoingMarks()
    woke: list[str] = []

    async def waiter() -> None:
        await marks.wait("vm1")
        woke.append("vm1")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        marks.set("vm2")
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        marks.set("vm1")
    assert woke == ["vm1"]


def test_iteration_event_marks_once_and_lifecycle_clears() -> None:
    t, _ = tracker()
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    t.on_migration_iteration(None, Dom("vm1"), 2, CONN)
    t.on_migration_iteration(None, Dom("vm1"), 3, object())  # an old connection's: ignored
    events = t.drain()  # type: ignore[attr-defined]
    assert events.count(MigrationChanged("vm1")) == 1
    assert t.outgoing.get("vm1") is not None
    # The switchover's pause keeps it; a failed migration's resume drops it.
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_SUSPENDED,
                   E.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED, CONN)
    assert t.outgoing.get("vm1") is not None
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_RESUMED,
                   E.VIR_DOMAIN_EVENT_RESUMED_MIGRATED, CONN)
    assert t.outgoing.get("vm1") is None
    # Completed: the domain goes away.
    t.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STOPPED,
                   E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED, CONN)
    assert t.outgoing.get("vm1") is None


def test_job_completed_clears_and_asks_again() -> None:
    t, _ = tracker()
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    t.drain()  # type: ignore[attr-defined]
    t.on_job_completed(None, Dom("vm1"), {}, CONN)
    assert t.outgoing.get("vm1") is None
    assert t.drain()[-1] == MigrationChanged("vm1")  # type: ignore[attr-defined]


class BlockedJobConnection:
    """Stands in for ``LibvirtConnection``: ``jobStats`` answers only when released (or
    fails like a timeout), as behind a real migration's job."""

    def __init__(self, job: dict[str, object]) -> None:
        self.closed = anyio.Event()
        self.job = job
        self.release = anyio.Event()
        self.calls = 0
        self.fail = False

    async def call(self, vm: str, name: str, fn: Callable[[Any], Any]) -> Any:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise LibvirtTimeout(vm, name, 10.0)
        return fn(self)

    def lookupByName(self, _vm: str) -> Any:  # noqa: N802 - libvirt's name
        return self

    def state(self) -> list[int]:
        return [E.VIR_DOMAIN_RUNNING, E.VIR_DOMAIN_RUNNING_BOOTED]

    def jobStats(self) -> dict[str, object]:  # noqa: N802 - libvirt's name
        return self.job


def hypervisor(conn: BlockedJobConnection) -> LibvirtHypervisor:
    h = LibvirtHypervisor(LibvirtSettings(uri="test:///default"), lambda _p: None,
                          MonotonicClock())
    h._conn = conn  # type: ignore[assignment]
    return h


async def test_migration_answers_from_the_event_while_jobstats_waits() -> None:
    conn = BlockedJobConnection({"type": E.VIR_DOMAIN_JOB_UNBOUNDED,
                                 "operation": E.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT})
    h = hypervisor(conn)
    tracker_ = h._tracker
    answers: list[MigrationInfo] = []

    async def ask() -> None:
        answers.append(await h.migration("vm1"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            assert answers == [] and conn.calls == 1  # jobStats waits
            tracker_.on_migration_iteration(None, Dom("vm1"), 1, None)  # not current: ignored
            tracker_.current = CONN
            tracker_.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    assert answers == [OUT]
    # Marked: answered at once, without a call, and handed to the verify task.
    assert await h.migration("vm1") == OUT
    assert conn.calls == 1
    assert "vm1" in tracker_.verify.names


async def test_verify_drops_a_mark_whose_migration_ended_silently() -> None:
    """Cancelled before the switchover: no lifecycle event; jobStats says so."""
    conn = BlockedJobConnection({"type": E.VIR_DOMAIN_JOB_NONE})
    conn.release.set()
    h = hypervisor(conn)
    t = h._tracker
    t.current = CONN
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](8)
    t.events = send
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    assert await h.migration("vm1") == OUT
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._verify_loop)
            await until(lambda: t.outgoing.get("vm1") is None, 5, "the mark dropped")
            tg.cancel_scope.cancel()
    assert await h.migration("vm1") == NOT_MIGRATING  # jobStats decides again
    seen = []
    while True:
        try:
            seen.append(receive.receive_nowait())
        except anyio.WouldBlock:
            break
    assert seen[-1] == MigrationChanged("vm1")


async def test_verify_keeps_a_mark_while_jobstats_says_migrating() -> None:
    conn = BlockedJobConnection({"type": E.VIR_DOMAIN_JOB_UNBOUNDED,
                                 "operation": E.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT})
    conn.release.set()
    h = hypervisor(conn)
    t = h._tracker
    t.current = CONN
    t.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    await h.migration("vm1")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._verify_loop)
            await until(lambda: conn.calls >= 1, 5, "the verify task's jobStats")
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert t.outgoing.get("vm1") is not None


async def test_a_failed_jobstats_without_a_mark_is_raised() -> None:
    conn = BlockedJobConnection({})
    conn.fail = True
    conn.release.set()
    with pytest.raises(LibvirtTimeout):
        await hypervisor(conn).migration("vm1")


async def test_set_threshold_stops_waiting_when_the_migration_shows() -> None:
    """A call that waits behind the migration's job ends when the event marks the VM (the
    VM's task is not held for the call's whole timeout), and a marked VM is refused at once
    (libvirt runs no threshold change until the migration ends)."""
    from autoextend.libvirt_backend.errors import LibvirtCallFailed
    from autoextend.monitor.protocols import DriveInfo

    conn = BlockedJobConnection({})
    h = hypervisor(conn)
    t = h._tracker
    t.current = CONN
    info = DriveInfo("vm1", "vda[1]", "vda[1]", "/dev/loop3", 1 << 30, 0, 64 << 20)
    failed: list[Exception] = []

    async def arm() -> None:
        try:
            await h.set_threshold("vm1", info, 32 << 20)
        except LibvirtCallFailed as err:
            failed.append(err)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(arm)
            await anyio.wait_all_tasks_blocked()
            assert conn.calls == 1 and failed == []
            t.on_migration_iteration(None, Dom("vm1"), 1, CONN)
    assert len(failed) == 1 and "migrating out" in str(failed[0])
    with pytest.raises(LibvirtCallFailed, match="migrates out"):
        await h.set_threshold("vm1", info, 32 << 20)
    assert conn.calls == 1


async def test_a_call_that_fails_unmarked_raises_its_own_error() -> None:
    """Not wrapped in an exception group by the wait for a mark."""
    conn = BlockedJobConnection({})
    conn.fail = True
    conn.release.set()
    from autoextend.monitor.protocols import DriveInfo

    info = DriveInfo("vm1", "vda[1]", "vda[1]", "/dev/loop3", 1 << 30, 0, 64 << 20)
    with pytest.raises(LibvirtTimeout):
        await hypervisor(conn).set_threshold("vm1", info, 32 << 20)


async def test_an_incoming_domain_whose_job_ended_arrived_once() -> None:
    """STARTED/MIGRATED, then no job and not paused for the migration: the incoming
    migration completed here (said once; libvirt no longer has the job)."""
    conn = BlockedJobConnection({"type": E.VIR_DOMAIN_JOB_NONE})
    conn.release.set()
    h = hypervisor(conn)
    t = h._tracker
    t.current = CONN
    assert await h.migration("vm1") == MigrationInfo(Role.NONE, Phase.NONE)
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED,
                   E.VIR_DOMAIN_EVENT_STARTED_MIGRATED, CONN)
    with anyio.fail_after(5):
        assert await h.migration("vm1") == MigrationInfo(Role.DESTINATION, Phase.COMPLETED)
        assert await h.migration("vm1") == MigrationInfo(Role.NONE, Phase.NONE)
