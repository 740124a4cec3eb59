"""Bounded event intake: nothing grows without limit, overflow becomes a resync."""

from __future__ import annotations

from typing import Any

import anyio
from qemu.qmp import Message

from autoextend.monitor.protocols import DrivesChanged, HypervisorEvent, VmResumed
from autoextend.qmp.connection import EVENT_NAMES
from autoextend.qmp.listener import BoundedListener, new_client
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
