"""The QMP backend of the :class:`~autoextend.monitor.protocols.Hypervisor` protocol.

Discovery lists the configured socket glob every ``rescan_interval_s``. Each socket gets
its own task (under one task group) that connects, names the VM, sends ``VmAppeared``,
serves events and drive polls, and on connection loss sends ``VmGone`` and reconnects with
backoff. A socket that refuses or hangs only ever delays its own task. A socket file that
was replaced (a restarted QEMU) wakes its task at once.

A session that ends because of what QEMU sent (a reply that fails validation, an unparsable
or too-deep message) or because of any unexpected error is logged, counted in
``session_failures`` (exported as ``autoextend_hypervisor_session_failures_total``) and retried
with the same growing backoff as a refused connect; it never ends discovery or another VM.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.clock import Clock
from autoextend.logs import get_logger
from autoextend.monitor.migration import MigrationInfo
from autoextend.monitor.protocols import (
    DriveInfo,
    HypervisorEvent,
    HypervisorHealth,
    IoLimits,
    RunState,
    VmAppeared,
    VmGone,
)
from autoextend.qemuimg import Measure
from autoextend.qmp.config import QmpSettings
from autoextend.qmp.connection import QmpConnection
from autoextend.qmp.devsize import device_sizes
from autoextend.qmp.errors import QmpConnectFailed, QmpDisconnected, QmpError, VmNotFound
from autoextend.qmp.replies import vm_name
from autoextend.qmp.session import DeviceSizes, VmSession
from autoextend.volumes import VolumeRef

log = get_logger("qmp")

SocketId = tuple[int, int]  # (st_dev, st_ino): changes when QEMU re-creates the socket


def _list_sockets(pattern: str) -> dict[str, SocketId]:
    found: dict[str, SocketId] = {}
    for path in glob.glob(pattern):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            found[path] = (st.st_dev, st.st_ino)
    return found


@dataclass
class _Watcher:
    """The task serving one socket path, and how discovery talks to it."""

    path: str
    socket_id: SocketId
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    wake: anyio.Event = field(default_factory=anyio.Event)
    first_attempt: anyio.Event = field(default_factory=anyio.Event)
    vanished: bool = False

    def poke(self) -> None:
        self.wake.set()
        self.wake = anyio.Event()


class QmpHypervisor:
    """QEMU instances found by a glob of QMP unix sockets.

    ``lookup`` maps a block device path to its volume (the volume backend's ``lookup``).
    """

    def __init__(
        self,
        settings: QmpSettings,
        lookup: Callable[[str], VolumeRef | None],
        clock: Clock,
        *,
        device_sizes: DeviceSizes = device_sizes,
        measure: Measure | None = None,
    ) -> None:
        self.settings = settings
        self._lookup = lookup
        self._clock = clock
        self._device_sizes = device_sizes
        self._measure = measure
        self._sessions: dict[str, VmSession] = {}
        self._watchers: dict[str, _Watcher] = {}
        #: Sessions ended by a bad reply or an unexpected error (not by QEMU going away).
        self.session_failures = 0
        self._malformed_events_closed = 0  # of sessions that ended
        # qemu.qmp logs every failed connect at ERROR through stdlib logging; ours say more.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

    # ------------------------------------------------------------------ protocol

    async def run(
        self,
        events: MemoryObjectSendStream[HypervisorEvent],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Discover and serve VMs until cancelled.

        ``started()`` comes after the first scan, once every socket found then has been
        tried once (connected and announced, or failed), bounded by the connect timeout.
        """
        async with anyio.create_task_group() as tg:
            await self._scan(tg, events)
            with anyio.move_on_after(self.settings.connect_timeout_s + 1.0):
                for watcher in list(self._watchers.values()):
                    await watcher.first_attempt.wait()
            log.info("qmp discovery started", glob=self.settings.socket_glob,
                     vms=len(self._sessions), sockets=len(self._watchers))
            if not self._watchers:
                log.warning("no QMP socket matches the glob: watching nothing until one appears",
                            glob=self.settings.socket_glob)
            task_status.started()
            while True:
                await self._clock.sleep(self.settings.rescan_interval_s)
                await self._scan(tg, events)

    async def drives(self, vm: str) -> list[DriveInfo]:
        return await self._session(vm, "query-block").drives()

    async def set_threshold(self, vm: str, drive: DriveInfo, threshold: int) -> None:
        await self._session(vm, "block-set-write-threshold").set_threshold(drive, threshold)

    async def run_state(self, vm: str) -> RunState:
        return await self._session(vm, "query-status").run_state()

    async def migration(self, vm: str) -> MigrationInfo:
        """The VM's migration role and phase (``query-status`` + ``query-migrate``)."""
        return await self._session(vm, "query-migrate").migration()

    async def outgoing_migration(self, vm: str) -> bool:
        """``Hypervisor.outgoing_migration``: from the ``MIGRATION`` events read, no command
        (``VmSession.outgoing_migration``)."""
        return await self._session(vm, "query-migrate").outgoing_migration()

    async def resume(self, vm: str) -> None:
        await self._session(vm, "cont").resume()

    async def io_limits(self, vm: str, drive: DriveInfo) -> IoLimits:
        return await self._session(vm, "query-block").io_limits(drive)

    async def set_io_limits(self, vm: str, drive: DriveInfo, limits: IoLimits) -> None:
        await self._session(vm, "block_set_io_throttle").set_io_limits(drive, limits)

    async def suspend(self, vm: str) -> None:
        await self._session(vm, "stop").suspend()

    async def resume_job(self, vm: str, job_id: str) -> None:
        await self._session(vm, "job-resume").resume_job(job_id)

    async def kill(self, vm: str) -> None:
        try:
            await self._session(vm, "quit").kill()
        except QmpDisconnected:
            pass  # QEMU quit before it answered: what was asked

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        return self._lookup(drive.path)

    # ------------------------------------------------------------------ extras

    @property
    def malformed_events(self) -> int:
        """QMP events dropped because their data failed validation, over all sessions."""
        return self._malformed_events_closed + sum(
            s.malformed_events for s in self._sessions.values())

    def vms(self) -> dict[str, str]:
        """Connected VMs: name -> QMP socket path."""
        return {name: s.conn.path for name, s in self._sessions.items()}

    def commands_sent(self, vm: str) -> tuple[int, tuple[tuple[str, str], ...]]:
        """How many QMP commands went to the VM on its current connection, and the last few
        commands and events in order (``QmpConnection.recent``); for tests and the bench.

        Raises:
            VmNotFound: the VM is not connected.
        """
        conn = self._session(vm, "commands").conn
        return conn.executed, tuple(conn.recent)

    def watch_problem(self) -> str | None:
        """Why nothing can be watched right now (for ``status``), or None."""
        if not self._watchers:
            return f"no QMP socket matches {self.settings.socket_glob}"
        return None

    def health(self) -> HypervisorHealth:
        """``Hypervisor.health``."""
        return HypervisorHealth(self.session_failures, self.malformed_events,
                                self.watch_problem(), self.unidentified())

    def unidentified(self) -> int:
        """Sockets found with no connected VM on them (connect failed, or not tried yet):
        the VMs behind them are not known by name."""
        served = {s.conn.path for s in self._sessions.values() if s.conn.connected}
        return sum(1 for path in self._watchers if path not in served)

    def _session(self, vm: str, command: str) -> VmSession:
        session = self._sessions.get(vm)
        if session is None or not session.conn.connected:
            raise VmNotFound(vm, command)
        return session

    # ------------------------------------------------------------------ discovery

    async def _scan(self, tg: TaskGroup, events: MemoryObjectSendStream[HypervisorEvent]) -> None:
        found = await anyio.to_thread.run_sync(_list_sockets, self.settings.socket_glob)
        for path, watcher in list(self._watchers.items()):
            if path not in found:
                log.info("qmp socket vanished", path=path)
                watcher.vanished = True
                watcher.scope.cancel()
                del self._watchers[path]
            elif found[path] != watcher.socket_id:
                watcher.socket_id = found[path]
                watcher.poke()  # re-created by a new QEMU: reconnect now
        for path, socket_id in found.items():
            if path not in self._watchers:
                watcher = _Watcher(path, socket_id)
                self._watchers[path] = watcher
                tg.start_soon(self._watch, watcher, events, name=f"qmp:{path}")

    async def _watch(
        self, watcher: _Watcher, events: MemoryObjectSendStream[HypervisorEvent]
    ) -> None:
        s = self.settings
        backoff = s.reconnect_initial_s
        failures = 0
        with watcher.scope:
            while True:
                conn = QmpConnection(
                    watcher.path,
                    connect_timeout_s=s.connect_timeout_s,
                    command_timeout_s=s.command_timeout_s,
                    event_queue_size=s.event_queue_size,
                )
                try:
                    await conn.open()
                except QmpConnectFailed as err:
                    failures += 1
                    level = log.warning if failures == 1 else log.debug
                    level("qmp connect failed", path=watcher.path, error=err.reason,
                          failures=failures)
                    watcher.first_attempt.set()
                    await self._sleep_or_wake(watcher, backoff)
                    backoff = min(backoff * 2, s.reconnect_max_s)
                    continue
                failures = 0
                failure: str | None
                try:
                    failure = await self._serve(watcher, conn, events)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    raise  # the monitor stopped listening: nothing left to serve
                except Exception as err:  # noqa: BLE001
                    # A bug in serving one VM must not take the others down.
                    log.exception("qmp vm task failed, reconnecting", path=watcher.path)
                    failure = f"{type(err).__name__}: {err}"[:500]
                finally:
                    await conn.close()
                failure = failure or conn.failure
                watcher.first_attempt.set()
                if failure is None:
                    backoff = s.reconnect_initial_s
                else:
                    self.session_failures += 1
                    log.warning("qmp session failed, reconnecting with backoff",
                                path=watcher.path, error=failure, retry_in_s=backoff,
                                session_failures=self.session_failures)
                await self._sleep_or_wake(watcher, backoff)
                if failure is not None:
                    backoff = min(backoff * 2, s.reconnect_max_s)

    async def _serve(
        self,
        watcher: _Watcher,
        conn: QmpConnection,
        events: MemoryObjectSendStream[HypervisorEvent],
    ) -> str | None:
        """Serve one connection until it is lost; the reason when we ended it, else None."""
        try:
            name = vm_name(await conn.execute("query-name"), Path(watcher.path).stem)
        except QmpError as err:
            if not conn.connected:
                watcher.first_attempt.set()
                return None
            log.warning("qmp query-name failed, naming VM by socket", path=watcher.path,
                        error=str(err))
            name = Path(watcher.path).stem
        name = self._unique_name(name, watcher.path)
        conn.label = name
        session = VmSession(name, conn, self._device_sizes, self._measure)
        self._sessions[name] = session
        vlog = log.bind(vm=name, path=watcher.path)
        announced = False
        try:
            try:
                await session.drives()  # learn node names before the first event arrives
            except QmpError as err:
                if session.failure is not None:
                    return session.failure
                vlog.warning("qmp drive query failed", error=str(err))
            try:
                await session.read_migration_events()
            except QmpError as err:
                if session.failure is not None:
                    return session.failure
                vlog.debug("qmp migration capability query failed", error=str(err))
            await events.send(VmAppeared(name))
            announced = True
            vlog.info("vm connected")
            watcher.first_attempt.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.pump_events, events)
                tg.start_soon(
                    session.watch_drives, events, self._clock, self.settings.drive_watch_s
                )
                await conn.wait_lost()
                tg.cancel_scope.cancel()
            if session.failure is None:
                vlog.info("vm connection lost")
            return session.failure
        finally:
            del self._sessions[name]
            self._malformed_events_closed += session.malformed_events
            if announced:
                await self._announce_gone(watcher, name, events,
                                          clean=session.conn.listener.guest_shutdown)

    async def _announce_gone(
        self, watcher: _Watcher, name: str, events: MemoryObjectSendStream[HypervisorEvent],
        *, clean: bool = False,
    ) -> None:
        """VmGone after a lost connection or a vanished socket; not on service shutdown."""
        try:
            with anyio.CancelScope(shield=watcher.vanished):
                with anyio.move_on_after(self.settings.command_timeout_s):
                    await events.send(VmGone(name, clean=clean))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def _unique_name(self, name: str, path: str) -> str:
        for candidate in (name, Path(path).stem, path):
            owner = self._sessions.get(candidate)
            if owner is None or owner.conn.path == path:
                if candidate != name:
                    log.warning("qmp vm name taken, using another", vm=name, path=path,
                                using=candidate)
                return candidate
        return path  # unreachable: paths are unique among watchers

    async def _sleep_or_wake(self, watcher: _Watcher, seconds: float) -> None:
        wake = watcher.wake
        async with anyio.create_task_group() as tg:
            async def sleeper() -> None:
                await self._clock.sleep(seconds)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await wake.wait()
            tg.cancel_scope.cancel()
