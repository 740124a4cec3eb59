"""How many QMP commands a lab host's monitor sends on the resume and re-arm paths.

Counted on each VM's QMP connection (``QmpConnection.recent``: its commands and events in
the order they were sent and read), for the tests and the bench:

* ``ok_to_cont``: from the extender's OK to the ``cont`` (the extender is wrapped);
* ``pause_to_cont``: from QEMU's ``STOP`` to the ``cont``;
* ``event_to_rearm``: from a ``BLOCK_WRITE_THRESHOLD`` to the re-armed threshold, for
  extensions with no pause in between.

:class:`CommandCounts` is the monitor's observer (give it to the lab host), and
:meth:`CommandCounts.attach` wraps the monitor's extender once the service runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoextend.monitor.core import Monitor
from autoextend.monitor.observer import ExtendFinished, MonitorEvent, Resumed
from autoextend.monitor.protocols import Extender, ExtendOutcome, RefreshGate
from autoextend.qmp.connection import commands_after
from autoextend.qmp.errors import VmNotFound
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import VolumeRef


@dataclass
class CommandCounts:
    """Per resume and per re-arm, the QMP commands sent (and their names)."""

    hv: QmpHypervisor | None = None
    ok_to_cont: list[list[str]] = field(default_factory=list)
    pause_to_cont: list[list[str]] = field(default_factory=list)
    event_to_rearm: list[list[str]] = field(default_factory=list)
    _at_ok: dict[str, int] = field(default_factory=dict)

    def attach(self, hv: QmpHypervisor, monitor: Monitor) -> None:
        """Count on ``hv``'s connections; wrap ``monitor``'s extender (its OKs are marks)."""
        self.hv = hv
        monitor.extender = _MarkOk(monitor.extender, self)

    def _counts(self) -> dict[str, int]:
        assert self.hv is not None
        found = {}
        for vm in self.hv.vms():
            try:
                found[vm] = self.hv.commands_sent(vm)[0]
            except VmNotFound:
                continue
        return found

    def notify(self, event: MonitorEvent) -> None:
        if self.hv is None:
            return
        if isinstance(event, Resumed) and event.automatic:
            count, trace = self.hv.commands_sent(event.vm)
            commands = [name for kind, name in trace if kind == "command"]
            at_ok = self._at_ok.pop(event.vm, None)
            if at_ok is not None and count - at_ok <= len(commands):
                self.ok_to_cont.append(commands[len(commands) - (count - at_ok):])
            self.pause_to_cont.append(commands_after(trace, "STOP"))
        elif isinstance(event, ExtendFinished) and "rearm" in event.phases:
            _, trace = self.hv.commands_sent(event.vm)
            events = [name for kind, name in trace if kind == "event"]
            if events and events[-1] == "BLOCK_WRITE_THRESHOLD":
                self.event_to_rearm.append(commands_after(trace, "BLOCK_WRITE_THRESHOLD"))


class _MarkOk:
    """The monitor's extender, noting each VM's command count when an extension is OK."""

    def __init__(self, inner: Extender, counts: CommandCounts) -> None:
        self.inner = inner
        self._counts = counts

    async def extend(self, volume: VolumeRef, size: int, *, refresh: bool = True,
                     may_refresh: RefreshGate | None = None) -> ExtendOutcome:
        outcome = await self.inner.extend(volume, size, refresh=refresh,
                                          may_refresh=may_refresh)
        if outcome.ok:
            self._counts._at_ok.update(self._counts._counts())
        return outcome
