"""What the libvirt backend knows about running domains, and what it tells the monitor.

Fed by libvirt's event callbacks (on the event loop thread, via libvirtaio) and by listings of
running domains after each connect and periodically. Callbacks stay tiny: translate
(:mod:`~autoextend.libvirt_backend.events`), update a few sets, ``send_nowait`` into the
monitor's stream. A full stream never blocks a callback: the VM is marked for a resync, which
the backend's resync task delivers (as ``VmAppeared`` or ``VmGone``) when there is room.
Pause reasons that need a query (I/O error pauses not known to be ENOSPC) are handed to the
backend's classify task the same way. Outgoing migrations are marked from libvirt's
migration iteration events (:mod:`~autoextend.libvirt_backend.outgoing`); the backend's
verify task checks a mark against ``jobStats`` in the background.
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.libvirt_backend import events as ev
from autoextend.libvirt_backend.migration import (
    ends_outgoing,
    migration_event,
    started_by_migration,
)
from autoextend.libvirt_backend.outgoing import OutgoingMarks
from autoextend.logs import get_logger
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    HypervisorEvent,
    MigrationChanged,
    VmAppeared,
    VmGone,
    VmResumed,
)

log = get_logger("libvirt")


class PendingVms:
    """A set of VM names plus a wake-up: filled by callbacks, drained by one task."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._wake = anyio.Event()

    def add(self, vm: str) -> None:
        self.names.add(vm)
        self._wake.set()

    async def take(self) -> set[str]:
        """Wait until at least one name is pending; return and clear them all."""
        while not self.names:
            await self._wake.wait()
            self._wake = anyio.Event()
        taken, self.names = self.names, set()
        return taken


class DomainTracker:
    """Running domains as last seen, ENOSPC reports, and the events sent about them.

    ``current`` is the connection whose callbacks count; callbacks registered on an older
    connection (their ``opaque``) are ignored.
    """

    def __init__(self) -> None:
        self.events: MemoryObjectSendStream[HypervisorEvent] | None = None
        self.current: object | None = None
        self.active: set[str] = set()
        self.enospc_seen: set[str] = set()  # ENOSPC reported since the VM last ran
        self.drive_by_path: dict[str, dict[str, str]] = {}
        self.event_seq: dict[str, int] = {}  # lifecycle events seen per VM
        self.resync = PendingVms()
        self.classify = PendingVms()
        self.outgoing = OutgoingMarks()  # VMs known from events to migrate out
        self.verify = PendingVms()       # marks to check against jobStats
        # Domains that STARTED/MIGRATED here (an incoming migration), until a look at their
        # job says how it ended (``LibvirtHypervisor.migration``): the fact that a domain
        # found paused after its job ended arrived by migration (monitor/handoff.py).
        self.incoming: set[str] = set()

    # ------------------------------------------------------------------ sending

    def emit(self, event: HypervisorEvent) -> None:
        """Never blocks: a full stream turns into a resync of that VM."""
        if self.events is None:
            return
        try:
            self.events.send_nowait(event)
        except anyio.WouldBlock:
            log.debug("event stream full, resync pending", vm=event.vm)
            self.resync.add(event.vm)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def forget(self, vm: str) -> None:
        self.active.discard(vm)
        self.enospc_seen.discard(vm)
        self.drive_by_path.pop(vm, None)
        self.outgoing.clear(vm)
        self.incoming.discard(vm)

    def drives_seen(self, vm: str, drives: list[DriveInfo]) -> None:
        """Remember which path is which drive, to name the drive of an ENOSPC report."""
        self.drive_by_path[vm] = {d.path: d.drive for d in drives}

    # ------------------------------------------------------------------ listings

    def reconcile(self, running: set[str], seq_before: dict[str, int], *,
                  announce_all: bool) -> None:
        """Apply a listing of running domains taken when ``event_seq`` was ``seq_before``.

        New domains (all of them with ``announce_all``, after a connect) get ``VmAppeared``,
        vanished ones ``VmGone``. A VM that had a lifecycle event while the list was being
        read is left to that event: it is newer than the listing.
        """
        moved = {vm for vm, seq in self.event_seq.items() if seq_before.get(vm) != seq}
        for vm in sorted(running - moved):
            if announce_all or vm not in self.active:
                self.active.add(vm)
                self.emit(VmAppeared(vm))
        for vm in sorted(self.active - running - moved):
            self.forget(vm)
            self.emit(VmGone(vm))

    # ------------------------------------------------------------------ callbacks
    # libvirt calls these on the event loop thread. An exception would be lost inside
    # libvirt, so each one logs its own.

    def _is_current(self, opaque: object) -> bool:
        return opaque is not None and opaque is self.current

    def on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int,
                     opaque: object) -> None:
        if not self._is_current(opaque):
            return
        try:
            vm = dom.name()
            self.event_seq[vm] = self.event_seq.get(vm, 0) + 1
            outcome = ev.lifecycle_outcome(vm, event, detail, enospc_seen=vm in self.enospc_seen)
            log.debug("libvirt lifecycle", vm=vm, lifecycle_event=event, detail=detail,
                      outcome=type(outcome).__name__)
            if isinstance(outcome, ev.Classify):
                self.classify.add(vm)
                return
            if isinstance(outcome, VmAppeared):
                self.active.add(vm)
                self.enospc_seen.discard(vm)
                if started_by_migration(event, detail):
                    self.incoming.add(vm)
            elif isinstance(outcome, VmGone):
                self.forget(vm)
            elif isinstance(outcome, VmResumed):
                self.enospc_seen.discard(vm)
            if outcome is not None:
                self.emit(outcome)
            if ends_outgoing(event) and self.outgoing.clear(vm):
                log.debug("outgoing migration mark cleared", vm=vm, lifecycle_event=event)
            moved = migration_event(vm, event, detail)
            if moved is not None:
                self.emit(moved)
        except Exception:  # noqa: BLE001 - see above
            log.exception("libvirt lifecycle callback failed")

    def on_migration_iteration(self, _conn: Any, dom: Any, iteration: int,
                               opaque: object) -> None:
        """VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION: this host is a migration's source."""
        if not self._is_current(opaque):
            return
        try:
            vm = dom.name()
            if self.outgoing.set(vm):
                log.info("libvirt reports a migration out", vm=vm, iteration=iteration)
                self.emit(MigrationChanged(vm))
        except Exception:  # noqa: BLE001
            log.exception("libvirt migration iteration callback failed")

    def on_job_completed(self, _conn: Any, dom: Any, _params: Any, opaque: object) -> None:
        """VIR_DOMAIN_EVENT_ID_JOB_COMPLETED: whatever job it was, ask again."""
        if not self._is_current(opaque):
            return
        try:
            vm = dom.name()
            if self.outgoing.clear(vm):
                log.debug("outgoing migration mark cleared: job completed", vm=vm)
            if vm in self.active:
                self.emit(MigrationChanged(vm))
        except Exception:  # noqa: BLE001
            log.exception("libvirt job completed callback failed")

    def on_io_error(self, _conn: Any, dom: Any, src_path: str, dev_alias: str, action: int,
                    reason: str, opaque: object) -> None:
        if not self._is_current(opaque):
            return
        try:
            vm = dom.name()
            log.debug("libvirt io error", vm=vm, path=src_path, alias=dev_alias, action=action,
                      reason=reason)
            outcome = ev.io_error_outcome(vm, src_path, reason, self.drive_by_path.get(vm, {}))
            if outcome is not None:
                self.enospc_seen.add(vm)
                self.emit(outcome)
        except Exception:  # noqa: BLE001
            log.exception("libvirt io error callback failed")

    def on_threshold(self, _conn: Any, dom: Any, dev: str, path: str, threshold: int,
                     excess: int, opaque: object) -> None:
        if not self._is_current(opaque):
            return
        try:
            outcome = ev.threshold_outcome(dom.name(), dev, threshold, excess)
            if outcome is not None:
                self.emit(outcome)
        except Exception:  # noqa: BLE001
            log.exception("libvirt threshold callback failed")

    def on_device_change(self, _conn: Any, dom: Any, alias: str, opaque: object) -> None:
        if not self._is_current(opaque):
            return
        try:
            vm = dom.name()
            if vm in self.active:
                self.emit(DrivesChanged(vm))
        except Exception:  # noqa: BLE001
            log.exception("libvirt device callback failed")
