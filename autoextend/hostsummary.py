"""This host's summary as ``pool status`` shows it: VMs, drives, pauses, recent extensions.

:class:`ExtendHistory` is a monitor observer that keeps the end times of the extensions
that ended well in the last hour and the latency (``total`` phase) of the last one.
:func:`facts` builds the summary (``spm/summary.py: HostFacts``) from the monitor's VMs and
that history; the service shows the same thing in its own ``status`` (``summary`` key), so
``pool status`` on any host can be checked against each host's ``status`` field by field.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from autoextend import __version__
from autoextend.clock import Clock
from autoextend.monitor.observer import ExtendFinished, MonitorEvent
from autoextend.monitor.protocols import OutcomeKind
from autoextend.spm.summary import HostFacts, PausedVm

HOUR_S = 3600.0
MAX_KEPT = 1 << 20  # end times kept at most (a host extending 290 times a second)

# A VM's ``state`` (``monitor/vmstate.py``) and, for other pauses, its ``paused`` text.
_REASONS = {"paused-enospc": "enospc", "paused-enospc-unmanaged": "enospc-unmanaged",
            "paused-io-error": "io-error"}
_OTHER = ("user", "migration", "other")


class ExtendHistory:
    """An observer: extensions that ended well, and the last one's latency."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ends: deque[float] = deque(maxlen=MAX_KEPT)
        self.last_latency_s: float | None = None

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case ExtendFinished(kind=OutcomeKind.OK, phases=phases):
                self._ends.append(self._clock.now())
                if "total" in phases:
                    self.last_latency_s = float(phases["total"])
            case _:
                pass

    def last_hour(self) -> int:
        """Extensions that ended well within the last hour."""
        cutoff = self._clock.now() - HOUR_S
        while self._ends and self._ends[0] < cutoff:
            self._ends.popleft()
        return len(self._ends)


def pause_reason(vm: Mapping[str, Any]) -> str | None:
    """Why a VM of ``Monitor.snapshot()`` is paused (``summary.REASONS``), None if not."""
    state = str(vm.get("state", ""))
    if state in _REASONS:
        return _REASONS[state]
    if state == "paused-other":
        text = str(vm.get("paused") or "other")
        return text if text in _OTHER else "other"
    return None


def facts(vms: Sequence[Mapping[str, Any]], history: ExtendHistory) -> HostFacts:
    """This host's summary from ``Monitor.snapshot()`` and the extension history."""
    paused = tuple(PausedVm(str(vm["vm"]), reason)
                   for vm in sorted(vms, key=lambda v: str(v["vm"]))
                   if (reason := pause_reason(vm)) is not None)
    last = history.last_latency_s
    return HostFacts(
        vms=len(vms), drives=sum(len(vm.get("drives", ())) for vm in vms),
        extends_hour=history.last_hour(),
        last_extend_ms=None if last is None else int(round(last * 1000)),
        paused=paused, version=__version__)


def as_dict(f: HostFacts) -> dict[str, Any]:
    """The summary as ``status`` and ``pool status --json`` show it."""
    return {"vms": f.vms, "drives": f.drives, "extends_last_hour": f.extends_hour,
            "last_extend_ms": f.last_extend_ms,
            "paused": {p.vm: p.reason for p in f.paused}, "version": f.version}
