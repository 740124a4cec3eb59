"""One connected VM: the calls the monitor makes, and QEMU's events turned into ours.

A :class:`VmSession` lives exactly as long as one QMP connection. It remembers the last
drive topology (to name the drive an event's node belongs to) and whether an ENOSPC error
was seen since the last resume (to classify an ``io-error`` stop on devices that have no
io-status).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from anyio.streams.memory import MemoryObjectSendStream

from autoextend.clock import Clock
from autoextend.logs import get_logger
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    HypervisorEvent,
    RunState,
    VmPaused,
    VmResumed,
)
from autoextend.qmp.connection import QmpConnection
from autoextend.qmp.errors import MalformedReply, QmpDisconnected, QmpError
from autoextend.qmp.pauses import drive_errors
from autoextend.qmp.replies import (
    Topology,
    drive_set,
    io_error_event,
    parse_io_status,
    parse_run_state,
    parse_topology,
    threshold_event,
)

log = get_logger("qmp")

DeviceSize = Callable[[str], Awaitable[int | None]]


class VmSession:
    def __init__(self, name: str, conn: QmpConnection, device_size: DeviceSize) -> None:
        self.name = name
        self.conn = conn
        self._device_size = device_size
        self.topology = Topology()
        self._saw_nospace = False
        self._log = log.bind(vm=name)

    # ------------------------------------------------------------ monitor's calls

    async def drives(self) -> list[DriveInfo]:
        """Fresh drives; ``physical`` is the device's size now, not QEMU's cached length."""
        block = await self.conn.execute("query-block")
        nodes = await self.conn.execute("query-named-block-nodes", {"flat": True})
        stats = await self.conn.execute("query-blockstats", {"query-nodes": True})
        self.topology = parse_topology(self.name, block, nodes, stats)
        fresh: list[DriveInfo] = []
        for info in self.topology.drives:
            size = await self._device_size(info.path)
            if size is not None and size != info.physical:
                info = dataclasses.replace(info, physical=size)
            fresh.append(info)
        return fresh

    async def run_state(self) -> RunState:
        status = await self.conn.execute("query-status")
        if isinstance(status, dict) and status.get("running") is True:
            return parse_run_state(self.name, status, ())
        block = await self.conn.execute("query-block")
        io_status = parse_io_status(self.name, block)
        state = parse_run_state(self.name, status, io_status.values(), self._saw_nospace)
        if state.running or not any(s != "ok" for s in io_status.values()):
            return state
        nodes = await self.conn.execute("query-named-block-nodes", {"flat": True})
        stats = await self.conn.execute("query-blockstats", {"query-nodes": True})
        return dataclasses.replace(state, errors=drive_errors(block, nodes, stats))

    async def set_threshold(self, drive: DriveInfo, threshold: int) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        await self.conn.execute(
            "block-set-write-threshold", {"node-name": drive.node, "write-threshold": threshold}
        )

    async def resume(self) -> None:
        await self.conn.execute("cont")

    async def kill(self) -> None:
        """``quit``: QEMU exits at once (the connection drops, the VM is gone)."""
        await self.conn.execute("quit")

    # ------------------------------------------------------------ background work

    async def pump_events(self, send: MemoryObjectSendStream[HypervisorEvent]) -> None:
        """Translate queued QEMU events until cancelled; a dropped event becomes a resync."""
        async for message in self.conn.listener:
            if self.conn.listener.take_overflow():
                self._log.warning("qmp event queue overflowed, resynchronising",
                                  dropped=self.conn.listener.dropped)
                await send.send(DrivesChanged(self.name))
            name = message.get("event")
            try:
                for event in await self._translate(str(name), message.get("data")):
                    await send.send(event)
            except MalformedReply as err:
                self._log.warning("ignoring malformed qmp event", qmp_event=name, error=str(err))
            except QmpDisconnected:
                return  # the connection's owner notices and reconnects
            except QmpError as err:
                self._log.warning("qmp query after event failed, resynchronising",
                                  qmp_event=name, error=str(err))
                await send.send(DrivesChanged(self.name))

    async def _translate(self, name: str, data: Any) -> list[HypervisorEvent]:
        if name == "BLOCK_WRITE_THRESHOLD":
            crossed = threshold_event(self.name, data, self.topology)
            if crossed is None:
                await self.drives()  # a drive we have not mapped yet (hot-plugged)
                crossed = threshold_event(self.name, data, self.topology)
            if crossed is None:
                self._log.debug("threshold event for an unmonitored node", data=data)
                return []
            return [crossed]
        if name == "BLOCK_IO_ERROR":
            _, enospc = io_error_event(self.name, data, self.topology)
            if enospc is None:
                return []
            self._saw_nospace = True
            if not enospc.drive:
                await self.drives()
                enospc = io_error_event(self.name, data, self.topology)[1] or enospc
            return [enospc]
        if name == "STOP":
            state = await self.run_state()
            if state.running or state.pause_reason is None:
                return []  # resumed again before we asked; RESUME follows or has come
            return [VmPaused(self.name, state.pause_reason)]
        if name == "RESUME":
            self._saw_nospace = False
            return [VmResumed(self.name)]
        if name == "DEVICE_DELETED":
            return [DrivesChanged(self.name)]
        return []

    async def watch_drives(
        self, send: MemoryObjectSendStream[HypervisorEvent], clock: Clock, interval_s: float
    ) -> None:
        """Poll the set of drives; send DrivesChanged when one was plugged or unplugged.

        QEMU 7.2 has no event for a hot-plugged disk, and DEVICE_DELETED for an unplug.
        """
        previous: frozenset[tuple[str, str]] | None = None
        while True:
            current: frozenset[tuple[str, str]] | None
            try:
                current = drive_set(self.name, await self.conn.execute("query-block"))
            except QmpDisconnected:
                return
            except QmpError as err:
                self._log.warning("qmp drive poll failed", error=str(err))
                current = previous
            if previous is not None and current != previous:
                self._log.info("drives changed")
                await send.send(DrivesChanged(self.name))
            previous = current
            await clock.sleep(interval_s)
