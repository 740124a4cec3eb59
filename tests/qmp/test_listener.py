"""Bounded event intake: nothing grows without limit, overflow becomes a resync."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from qemu.qmp import Message

from autoextend.clock import ManualClock
from autoextend.lab.waiting import until
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    EnospcPause,
    HypervisorEvent,
    ThresholdCrossed,
    VmResumed,
)
from autoextend.qmp.connection import EVENT_NAMES
from autoextend.qmp.listener import BoundedListener, new_client
from autoextend.qmp.pollgate import DEFER_PERIODS, QUIET_S, PollGate
from autoextend.qmp.replies import Topology
from autoextend.qmp.session import VmSession


def event(name: str, data: dict[str, Any] | None = None) -> Message:
    body: dict[str, Any] = {"event": name, "timestamp": {"seconds": 1, "microseconds": 2}}
    if data is not None:
        body["data"] = data
    return Message(body)


async def test_default_listener_stores_nothing() -> None:
    client = new_client("t")
    for _ in range(1000):
        await client.events.put(event("RESUME"))
    assert client.events.empty()
    assert client.events.history == ()


async def test_bounded_listener_drops_and_flags_overflow_without_history() -> None:
    listener = BoundedListener(EVENT_NAMES, maxsize=3)
    for _ in range(10):
        await listener.put(event("RESUME"))
    await listener.put(event("SHUTDOWN"))  # not one of ours: never queued
    assert listener.dropped == 7
    assert listener.history == ()
    assert listener.take_overflow() is True
    assert listener.take_overflow() is False
    assert [(await listener.get())["event"] for _ in range(3)] == ["RESUME"] * 3
    assert listener.empty()


class _StubConnection:
    """Only what pump_events touches for events that need no query."""

    def __init__(self, listener: BoundedListener) -> None:
        self.listener = listener


async def test_pump_turns_overflow_into_a_resync() -> None:
    listener = BoundedListener(EVENT_NAMES, maxsize=2)
    for _ in range(5):
        await listener.put(event("RESUME"))
    await listener.put(event("BLOCK_WRITE_THRESHOLD", {"node-name": 7}))  # dropped (full)
    session = VmSession("vm1", _StubConnection(listener), lambda paths: _none())  # type: ignore[arg-type]
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](10)
    with send, receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.pump_events, send)
            got = [await receive.receive() for _ in range(3)]
            await listener.put(event("BLOCK_WRITE_THRESHOLD", {"node-name": 7}))  # malformed
            await listener.put(event("DEVICE_DELETED", {"device": "sdb", "path": "/x"}))
            got.append(await receive.receive())
            tg.cancel_scope.cancel()
    assert got == [DrivesChanged("vm1"), VmResumed("vm1"), VmResumed("vm1"),
                   DrivesChanged("vm1")]


async def _none() -> list[int | None]:
    return []


async def test_a_guest_shutdown_is_remembered_not_queued() -> None:
    from autoextend.qmp.listener import BoundedListener

    listener = BoundedListener(["STOP"], 4)
    await listener.put(Message({"event": "SHUTDOWN",
                                "data": {"guest": False, "reason": "host-signal"}}))
    assert not listener.guest_shutdown
    await listener.put(Message({"event": "SHUTDOWN",
                                "data": {"guest": True, "reason": "guest-shutdown"}}))
    assert listener.guest_shutdown and listener.dropped == 0


class _PollConnection(_StubConnection):
    """What the drive poll and the event pump touch: every command counted with the
    manual clock's time, each answered with an empty list (no drives, no capabilities)."""

    def __init__(self, listener: BoundedListener, clock: ManualClock) -> None:
        super().__init__(listener)
        self.clock = clock
        self.sent: list[tuple[str, float]] = []

    @property
    def executed(self) -> int:
        return len(self.sent)

    async def execute(self, command: str, arguments: Any = None) -> object:
        self.sent.append((command, self.clock.now()))
        return []

    def polls(self) -> list[float]:
        """When each ``query-block`` was sent."""
        return [at for command, at in self.sent if command == "query-block"]


VDA = DriveInfo("vm1", "vda", "file0", "/dev/loop7", 1 << 30, 1 << 26, 1 << 26)
PERIOD_S = 1.0


@asynccontextmanager
async def _polling() -> AsyncIterator[tuple[BoundedListener, _PollConnection, VmSession,
                                            ManualClock,
                                            MemoryObjectReceiveStream[HypervisorEvent]]]:
    """A session with one drive (vda), its event pump and its drive poll (period 1 s) on a
    manual clock, after the poll's first read."""
    listener = BoundedListener(EVENT_NAMES, maxsize=10)
    clock = ManualClock()
    conn = _PollConnection(listener, clock)
    session = VmSession("vm1", conn, lambda paths: _none())  # type: ignore[arg-type]
    session.topology = Topology(drives=(VDA,), by_node={"file0": "vda", "fmt0": "vda"},
                                by_device={"vda-be": "vda"})
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](10)
    with send, receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.pump_events, send)
            tg.start_soon(session.watch_drives, send, clock, PERIOD_S)
            await until(lambda: len(conn.polls()) == 1)
            yield listener, conn, session, clock, receive
            tg.cancel_scope.cancel()


async def _advance(clock: ManualClock, seconds: float,
                   each_step: Callable[[], Awaitable[None]] | None = None) -> None:
    """Move the manual clock by ``seconds`` in steps of an eighth of the quiet time (exact in
    binary, so that the steps add up to the deadlines exactly), letting
    every woken task run after each step."""
    step = QUIET_S / 8
    for _ in range(round(seconds / step)):
        clock.advance(step)
        await anyio.wait_all_tasks_blocked()
        if each_step is not None:
            await each_step()


def _stop_enospc(action: str = "stop") -> Message:
    return event("BLOCK_IO_ERROR", {
        "device": "", "node-name": "fmt0", "operation": "write", "action": action,
        "nospace": True, "reason": "No space left on device"})


async def test_the_drive_poll_waits_while_the_vm_is_stopped_for_enospc() -> None:
    """The poll's query-block landed between an extension and its cont (issue 30's resume
    windows, stop 42): it waits from the ENOSPC error to the RESUME."""
    async with _polling() as (listener, conn, _, clock, receive):
        # An ENOSPC handed to the guest (werror=report) stops nothing: the poll goes on.
        await listener.put(_stop_enospc("report"))
        assert await receive.receive() == EnospcPause("vm1", "vda")
        await _advance(clock, PERIOD_S + QUIET_S)
        assert len(conn.polls()) == 2
        await listener.put(_stop_enospc())
        assert await receive.receive() == EnospcPause("vm1", "vda")
        await _advance(clock, 2 * PERIOD_S)
        assert len(conn.polls()) == 2
        await listener.put(event("RESUME"))
        assert await receive.receive() == VmResumed("vm1")
        resumed = clock.now()
        await _advance(clock, PERIOD_S)
        assert len(conn.polls()) == 3
        assert conn.polls()[-1] - resumed <= QUIET_S + 1e-9


async def test_the_drive_poll_waits_for_a_crossed_threshold_to_be_rearmed() -> None:
    """An extension on its way (a threshold crossed, not re-armed): the poll waits for the
    re-arm, then for a quiet moment after it (the cont may follow the re-arm)."""
    async with _polling() as (listener, conn, session, clock, receive):
        await listener.put(event("BLOCK_WRITE_THRESHOLD", {
            "node-name": "fmt0", "write-threshold": 1 << 26, "amount-exceeded": 4096}))
        assert await receive.receive() == ThresholdCrossed("vm1", "vda", 1 << 26, 4096)
        await _advance(clock, PERIOD_S + 3 * QUIET_S)  # the crossing holds it (< 1 period)
        assert len(conn.polls()) == 1
        await session.set_threshold(VDA, 1 << 27)
        rearmed = clock.now()
        await _advance(clock, 2 * QUIET_S)
        assert len(conn.polls()) == 2
        assert QUIET_S - 1e-9 <= conn.polls()[-1] - rearmed <= 2 * QUIET_S


async def test_a_threshold_left_unarmed_holds_the_poll_for_one_period() -> None:
    """A drive left unarmed (at its cap) does not hold the poll beyond one period after the
    poll first saw its crossing."""
    async with _polling() as (listener, conn, _, clock, receive):
        await listener.put(event("BLOCK_WRITE_THRESHOLD", {
            "node-name": "fmt0", "write-threshold": 1 << 26, "amount-exceeded": 4096}))
        await receive.receive()
        await _advance(clock, PERIOD_S + PERIOD_S / 2)
        assert len(conn.polls()) == 1
        await _advance(clock, PERIOD_S / 2 + QUIET_S)
        assert len(conn.polls()) == 2
        # and the next pass is not held again by the same crossing
        await _advance(clock, PERIOD_S + QUIET_S)
        assert len(conn.polls()) == 3


async def test_the_drive_poll_waits_for_a_quiet_connection_then_polls_anyway() -> None:
    """A command sent in the last quiet time holds the poll (the monitor is at work on the
    VM); a VM that is never quiet is polled DEFER_PERIODS periods after the poll began to
    wait."""
    async with _polling() as (_, conn, session, clock, _receive):
        async def busy() -> None:
            if round(clock.now() / QUIET_S * 8) % 4 == 0:  # a command every half quiet time
                await session.conn.execute("query-status")

        waiting_from = conn.polls()[0] + PERIOD_S
        await _advance(clock, PERIOD_S + DEFER_PERIODS * PERIOD_S - QUIET_S, busy)
        assert len(conn.polls()) == 1
        await _advance(clock, 2 * QUIET_S, busy)
        assert len(conn.polls()) == 2
        assert conn.polls()[-1] - waiting_from >= DEFER_PERIODS * PERIOD_S - 1e-9
        # quiet again: the next pass polls one quiet time after its period
        await _advance(clock, PERIOD_S + QUIET_S)
        assert len(conn.polls()) == 3


def test_the_poll_gate_is_busy_for_each_of_its_reasons() -> None:
    gate = PollGate()
    assert not gate.busy(10.0, 1.0, stopped=False, commands_meanwhile=False)
    assert gate.busy(10.0, 1.0, stopped=True, commands_meanwhile=False)
    assert gate.busy(10.0, 1.0, stopped=False, commands_meanwhile=True)
    gate.cross("vda")
    assert gate.busy(10.0, 1.0, stopped=False, commands_meanwhile=False)
    assert gate.busy(10.9, 1.0, stopped=False, commands_meanwhile=False)
    assert not gate.busy(11.0, 1.0, stopped=False, commands_meanwhile=False)  # one period
    gate.rearm("vda")
    gate.cross("vda")  # crossed again after its re-arm: a new extension, held anew
    assert gate.busy(11.0, 1.0, stopped=False, commands_meanwhile=False)
    gate.rearm("vda")
    assert not gate.busy(11.0, 1.0, stopped=False, commands_meanwhile=False)
