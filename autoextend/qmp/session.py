"""One connected VM: the calls the monitor makes, and QEMU's events turned into ours.

A :class:`VmSession` lives exactly as long as one QMP connection. It remembers the last
drive topology (to name the drive an event's node belongs to) and whether an ENOSPC error
was seen since the last resume (to classify an ``io-error`` stop on devices that have no
io-status).

A reply that fails validation (:class:`MalformedReply`) or any unexpected exception while
serving the monitor ends the session: the connection is closed, the caller gets a
:class:`~autoextend.qmp.errors.QmpError` (a HypervisorError, which the monitor handles per VM),
``failure`` records why, and the backend reconnects with a growing backoff. Nothing QEMU sent
in that reply is acted upon.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.clock import Clock
from autoextend.logs import get_logger
from autoextend.monitor.migration import MigrationInfo, Phase, Role
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    HypervisorEvent,
    IoLimits,
    MigrationChanged,
    MigrationRunning,
    RunState,
    VmPaused,
    VmResumed,
)
from autoextend.qemuimg import Measure
from autoextend.qmp import errpolicy
from autoextend.qmp.connection import QmpConnection
from autoextend.qmp.errors import MalformedReply, QmpCommandFailed, QmpDisconnected, QmpError
from autoextend.qmp.iolimits import parse_io_limits, throttle_args
from autoextend.qmp.jobwatch import JobWatch, job_event
from autoextend.qmp.migration import (
    activated_lengths,
    guest_did_io,
    migration_info,
    migration_phase,
)
from autoextend.qmp.pauses import drive_errors
from autoextend.qmp.pollgate import PollGate
from autoextend.qmp.replies import (
    MAX_SIZE,
    Topology,
    drive_set,
    io_error_event,
    parse_io_status,
    parse_run_state,
    parse_topology,
    threshold_event,
)
from autoextend.qmp.stopstate import StopErrors

log = get_logger("qmp")

#: The sizes of block device paths now, one per path (None: unknown; ``qmp/devsize.py``).
DeviceSizes = Callable[[Sequence[str]], Awaitable[list[int | None]]]
T = TypeVar("T")

#: The drive watch re-reads the ``events`` migration capability every this many passes.
CAPABILITY_EVERY = 6
#: ``MIGRATION`` statuses after which no migration runs.
_NOT_RUNNING = frozenset({Phase.NONE, Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})


class VmSession:
    def __init__(self, name: str, conn: QmpConnection, device_sizes: DeviceSizes,
                 measure: Measure | None = None) -> None:
        self.name = name
        self.conn = conn
        self._device_sizes = device_sizes
        self.topology = Topology()
        self._saw_nospace = False
        self._stops = StopErrors()  # the errors that stopped the VM (qmp/stopstate.py)
        self._poll_gate = PollGate()  # when the drive poll may run (qmp/pollgate.py)
        self._jobs = JobWatch(measure)
        self._log = log.bind(vm=name)
        #: Why this session was ended by us (a bad reply, an unexpected error), else None.
        self.failure: str | None = None
        #: Events dropped because their data failed validation (logged 1st, 10th, every 1000th).
        self.malformed_events = 0
        self._policies: dict[str, str] = {}   # device QOM path -> its werror (errpolicy.py)
        self._argv: list[str] | None = None   # QEMU's command line, read once if needed
        #: QEMU sends ``MIGRATION`` events (the ``events`` migration capability is on), as
        #: last read; False when unknown (then every outgoing-migration check asks).
        self.migration_events = False

    async def fail(self, command: str, err: BaseException) -> QmpError:
        """End this session because of ``err``; return the error to raise to the caller."""
        if self.failure is None:
            self.failure = str(err) if isinstance(err, QmpError) else f"{command}: {err!r}"
            self._log.warning("qmp session ended: bad reply or error", command=command,
                              error=str(err)[:500], error_type=type(err).__name__)
        await self.conn.close()
        if isinstance(err, QmpError):
            return err
        return QmpDisconnected(self.name, command, f"session ended: {type(err).__name__}")

    async def _guarded(self, command: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except QmpDisconnected:
            raise
        except MalformedReply as err:
            raise await self.fail(command, err) from None
        except QmpError:
            raise  # timeouts and QEMU's own errors: the monitor retries, the session stays
        except Exception as err:  # noqa: BLE001 - one VM's bug must stay that VM's
            raise await self.fail(command, err) from err

    # ------------------------------------------------------------ monitor's calls

    async def drives(self) -> list[DriveInfo]:
        """Fresh drives; ``physical`` is the device's size now, not QEMU's cached length."""
        return await self._guarded("query-block", self._drives)

    async def _drives(self) -> list[DriveInfo]:
        block = await self.conn.execute("query-block")
        nodes = await self.conn.execute("query-named-block-nodes", {"flat": True})
        stats = await self.conn.execute("query-blockstats", {"query-nodes": True})
        self.topology = parse_topology(self.name, block, nodes, stats)
        self.topology = await self._jobs.add_targets(self.name, self.conn, self.topology,
                                                     nodes, stats)
        fresh: list[DriveInfo] = []
        drives = self.topology.drives
        sizes = await self._device_sizes([info.path for info in drives])
        for info, size in zip(drives, sizes, strict=True):
            if size is not None and size != info.physical:
                info = dataclasses.replace(info, physical=size)
            policy = await self._error_policy(info.drive)
            if policy:
                info = dataclasses.replace(info, error_policy=policy)
            fresh.append(info)
        return fresh

    async def _error_policy(self, drive: str) -> str:
        """The drive's ``werror`` (``qmp/errpolicy.py``): read once per device per session."""
        qdev = self.topology.qdev_of.get(drive)
        if qdev is None:
            return ""
        if qdev in self._policies:
            return self._policies[qdev]
        try:
            value = await self.conn.execute("qom-get", {"path": qdev, "property": "werror"})
        except QmpCommandFailed:
            value = None  # a device without the property: unknown
        legacy = ""
        if value == "auto":
            if self._argv is None:
                found = await anyio.to_thread.run_sync(errpolicy.qemu_argv, self.conn.path)
                self._argv = found or []
            legacy = errpolicy.legacy_werror(self._argv, self.topology.device_of.get(drive, ""))
        policy = errpolicy.resolve(value, legacy)
        self._policies[qdev] = policy
        return policy

    async def run_state(self) -> RunState:
        return await self._guarded("query-status", self._run_state)

    async def _run_state(self) -> RunState:
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

    async def migration(self) -> MigrationInfo:
        return await self._guarded("query-migrate", self._migration)

    async def _migration(self) -> MigrationInfo:
        status = await self.conn.execute("query-status")
        run_status = status.get("status", "") if isinstance(status, dict) else ""
        reply = await self.conn.execute("query-migrate")
        run = run_status if isinstance(run_status, str) else ""
        info = migration_info(self.name, run, reply)
        if info.role is Role.DESTINATION and info.phase is Phase.COMPLETED:
            info = dataclasses.replace(info, node_lengths=await self._activated_lengths(run))
        return info

    async def _activated_lengths(self, run_status: str) -> tuple[tuple[str, int], ...] | None:
        """What QEMU activated the drives' nodes with, after an incoming migration
        (``qmp/migration.py: activated_lengths``); None once the guest did I/O here
        (``guest_did_io``) or when QEMU refuses to say."""
        try:
            # Once the guest did I/O here it has run: no guard (guest_did_io says why).
            if guest_did_io(await self.conn.execute("query-blockstats")) is not False:
                return None
            caps = await self.conn.execute("query-migrate-capabilities")
            nodes = await self.conn.execute("query-named-block-nodes", {"flat": True})
        except QmpCommandFailed:
            return None
        return activated_lengths(caps, run_status, nodes,
                                 {d.drive: d.node for d in self.topology.drives if not d.job})

    async def read_migration_events(self) -> bool:
        """Read whether QEMU sends ``MIGRATION`` events (``query-migrate-capabilities``);
        a QEMU that refuses or answers garbage counts as not sending them."""
        try:
            reply = await self.conn.execute("query-migrate-capabilities")
        except QmpCommandFailed:
            reply = None
        self.migration_events = isinstance(reply, list) and any(
            isinstance(c, dict) and c.get("capability") == "events" and c.get("state") is True
            for c in reply)
        return self.migration_events

    async def outgoing_migration(self) -> bool:
        """Whether an outgoing migration may have started (``Hypervisor.outgoing_migration``).

        No command while QEMU sends ``MIGRATION`` events and the last one read (if any) says
        no migration runs: QEMU emits ``setup`` inside the ``migrate`` command, before any
        byte goes to the destination, and the reader takes it off the socket before any
        reply QEMU sent after it. Otherwise ``query-status`` + ``query-migrate``.
        """
        status = self.conn.listener.migration_status
        if self.migration_events and (status is None or migration_phase(
                self.name, {"status": status}) in _NOT_RUNNING):
            return False
        info = await self.migration()
        return info.role is Role.SOURCE and info.running

    async def set_threshold(self, drive: DriveInfo, threshold: int) -> None:
        if not 0 <= threshold <= MAX_SIZE:
            raise ValueError(f"threshold must be in 0..2**63-1, got {threshold}")
        self._poll_gate.rearm(drive.drive)
        await self.conn.execute(
            "block-set-write-threshold", {"node-name": drive.node, "write-threshold": threshold}
        )

    async def io_limits(self, drive: DriveInfo) -> IoLimits:
        """The guest drive's I/O limits (``query-block``, ``qmp/iolimits.py``)."""
        return await self._guarded("query-block", lambda: self._io_limits(drive))

    async def _io_limits(self, drive: DriveInfo) -> IoLimits:
        qdev, device = self._device_names(drive)
        limits = parse_io_limits(self.name, await self.conn.execute("query-block"), qdev,
                                 device)
        if limits is None:
            raise QmpCommandFailed(self.name, "query-block", "DeviceNotFound",
                                   f"no device with a medium for drive {drive.drive}")
        return limits

    async def set_io_limits(self, drive: DriveInfo, limits: IoLimits) -> None:
        """``block_set_io_throttle`` with exactly ``limits`` (``qmp/iolimits.py``)."""
        qdev, device = self._device_names(drive)
        await self.conn.execute("block_set_io_throttle", throttle_args(qdev, device, limits))

    def _device_names(self, drive: DriveInfo) -> tuple[str, str]:
        """(QOM path, BlockBackend name) of the guest device of ``drive``."""
        qdev = self.topology.qdev_of.get(drive.drive, "")
        device = self.topology.device_of.get(drive.drive, "")
        if drive.job or not (qdev or device):
            raise QmpCommandFailed(self.name, "block_set_io_throttle", "DeviceNotFound",
                                   f"drive {drive.drive} is not a guest device")
        return qdev, device

    async def resume(self) -> None:
        """``cont``, right after a ``query-migrate`` on the same connection says no outgoing
        migration is active (raises :class:`MigrationRunning` otherwise).

        Why ask: the ``MIGRATION`` events may be off, or not read yet, and nothing in QEMU
        stops a ``cont`` on a source whose migration runs (libvirt's job lock does that for
        libvirt). The window left: a ``migrate`` that QEMU handles between its answer to
        ``query-migrate`` and the ``cont`` (one round trip on this socket; QEMU handles
        monitor commands one at a time on its main loop). See docs/migration.md.
        """
        status = await self._guarded("query-migrate", self._migration_status)
        if migration_phase(self.name, {"status": status}) not in _NOT_RUNNING:
            raise MigrationRunning(self.name, status)
        await self.conn.execute("cont")

    async def _migration_status(self) -> str:
        reply = await self.conn.execute("query-migrate")
        migration_phase(self.name, reply)  # validate (MalformedReply ends the session)
        status = reply.get("status", "none") if isinstance(reply, dict) else "none"
        return status if isinstance(status, str) else "none"

    async def suspend(self) -> None:
        """``stop``: the guest pauses (a stale view, ``monitor/views.py``)."""
        await self.conn.execute("stop")

    async def resume_job(self, job_id: str) -> None:
        """``job-resume``: a job paused by ``on-error=enospc`` goes on once it has room."""
        await self.conn.execute("job-resume", {"id": job_id})

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
            if not isinstance(name, str) or len(name) > 64:
                continue
            try:
                for event in await self._translate(name, message.get("data")):
                    await send.send(event)
            except MalformedReply as err:
                self.malformed_events += 1
                if self.malformed_events in (1, 10) or self.malformed_events % 1000 == 0:
                    self._log.warning("ignoring malformed qmp event", qmp_event=name,
                                      error=str(err), malformed_events=self.malformed_events)
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
            self._poll_gate.cross(crossed.drive)
            return [crossed]
        if name == "BLOCK_IO_ERROR":
            self._stops.note(data, self.topology)
            _, enospc = io_error_event(self.name, data, self.topology)
            if enospc is None:
                return []
            self._saw_nospace = True
            if not enospc.drive:
                await self.drives()
                enospc = io_error_event(self.name, data, self.topology)[1] or enospc
            return [enospc]
        if name == "STOP":
            # An ENOSPC stop is known from the error events before it: no read (issue 30).
            state = self._stops.state() or await self.run_state()
            if state.running or state.pause_reason is None:
                return []  # resumed again before we asked; RESUME follows or has come
            return [VmPaused(self.name, state.pause_reason, state)]
        if name == "RESUME":
            self._saw_nospace = False
            self._stops.clear()
            return [VmResumed(self.name)]
        if name == "DEVICE_DELETED":
            return [DrivesChanged(self.name)]
        if name == "MIGRATION":
            migration_phase(self.name, data)  # validate; the monitor asks for the rest
            return [MigrationChanged(self.name)]
        return job_event(self.name, name, data, self._log)

    async def watch_drives(
        self, send: MemoryObjectSendStream[HypervisorEvent], clock: Clock, interval_s: float
    ) -> None:
        """Poll the set of drives; send DrivesChanged when one was plugged or unplugged.

        QEMU 7.2 has no event for a hot-plugged disk, and DEVICE_DELETED for an unplug.

        After its first read, each poll waits for a quiet moment of this VM's session (no
        ENOSPC stop, no extension on its way, no command just sent; ``qmp/pollgate.py``), so
        that its ``query-block`` does not sit between an extension and the ``cont``.
        """
        previous: frozenset[tuple[str, str]] | None = None
        passes = 0
        while True:
            if previous is not None:
                await self._poll_gate.quiet_moment(
                    clock, interval_s, lambda: self.conn.executed,
                    lambda: bool(self._stops.errors))
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
            passes += 1
            if passes % CAPABILITY_EVERY == 0:
                # A management may turn the events capability on or off at any time.
                with contextlib.suppress(QmpError):
                    await self.read_migration_events()
            await clock.sleep(interval_s)
