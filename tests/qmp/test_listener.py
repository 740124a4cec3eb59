"""Bounded event intake: nothing grows without limit, overflow becomes a resync."""

from __future__ import annotations

from typing import Any

import anyio
from qemu.qmp import Message

from autoextend.clock import ManualClock
from autoextend.lab.waiting import until
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    EnospcPause,
    HypervisorEvent,
    VmResumed,
)
from autoextend.qmp.connection import EVENT_NAMES
from autoextend.qmp.listener import BoundedListener, new_client
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
    session = VmSession("vm1", _StubConnection(listener), lambda path: _none())  # type: ignore[arg-type]
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


async def _none() -> int | None:
    return None


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
    """What the drive poll and the event pump touch: every command counted, each answered
    with an empty list (no drives, no capabilities)."""

    def __init__(self, listener: BoundedListener) -> None:
        super().__init__(listener)
        self.sent: list[str] = []

    async def execute(self, command: str, arguments: Any = None) -> object:
        self.sent.append(command)
        return []


async def test_the_drive_poll_waits_while_the_vm_is_stopped_for_enospc() -> None:
    """The poll's query-block landed between an extension and its cont (issue 30's resume
    windows, stop 42): it waits from the ENOSPC error to the RESUME."""
    listener = BoundedListener(EVENT_NAMES, maxsize=10)
    conn = _PollConnection(listener)
    session = VmSession("vm1", conn, lambda path: _none())  # type: ignore[arg-type]
    session.topology = Topology(
        drives=(DriveInfo("vm1", "vda", "file0", "/dev/loop7", 1 << 30, 1 << 26, 1 << 26),),
        by_node={"file0": "vda", "fmt0": "vda"}, by_device={"vda-be": "vda"})
    clock = ManualClock()

    def polls() -> int:
        return conn.sent.count("query-block")

    send, receive = anyio.create_memory_object_stream[HypervisorEvent](10)
    with send, receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.pump_events, send)
            tg.start_soon(session.watch_drives, send, clock, 1.0)
            await until(lambda: polls() == 1)
            # An ENOSPC handed to the guest (werror=report) stops nothing: the poll goes on.
            await listener.put(event("BLOCK_IO_ERROR", {
                "device": "", "node-name": "fmt0", "operation": "write", "action": "report",
                "nospace": True, "reason": "No space left on device"}))
            assert await receive.receive() == EnospcPause("vm1", "vda")
            clock.advance(1.0)
            await until(lambda: polls() == 2)
            await listener.put(event("BLOCK_IO_ERROR", {
                "device": "", "node-name": "fmt0", "operation": "write", "action": "stop",
                "nospace": True, "reason": "No space left on device"}))
            assert await receive.receive() == EnospcPause("vm1", "vda")
            await anyio.sleep(0.01)  # time is the subject: a poll in flight ends first
            before = polls()
            for _ in range(3):
                clock.advance(1.0)
                await anyio.sleep(0.01)  # time is the subject: a due poll would be sent
            assert polls() == before
            await listener.put(event("RESUME"))
            assert await receive.receive() == VmResumed("vm1")
            clock.advance(1.0)
            await until(lambda: polls() == before + 1)
            tg.cancel_scope.cancel()
