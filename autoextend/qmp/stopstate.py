"""The run state of an ENOSPC stop, from the events QEMU sent before its ``STOP`` (pure).

With ``werror=enospc`` QEMU sends ``BLOCK_IO_ERROR`` (``action: stop``, ``nospace: true``)
for the failed write, then asks its main loop to stop the VM, which sends ``STOP``. QMP keeps
one monitor's messages in order, so a ``STOP`` read right after such an error (and no
``RESUME`` between) is that pause: the session builds its :class:`RunState` from the events
(:meth:`StopErrors.state`) instead of reading ``query-status`` and the drives' io-status (up
to four commands, which used to land between an extension's OK and the ``cont``, issue 30
item 5).

Only a pure ENOSPC stop on drives the session can name takes the shortcut. Anything else (an
error on a drive it does not know, another I/O error, a stop with no error before it) is
read as before. The one thing the events cannot tell: an operator's ``stop`` handled by QEMU
between the error and its own stop request (one main-loop turn). That pause is then taken
for the ENOSPC one; the same as an operator's ``stop`` sent at any time during an ENOSPC
pause, which no read can tell either (QEMU sends no second ``STOP``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoextend.monitor.protocols import DriveIoError, PauseReason, RunState
from autoextend.qmp.replies import Topology


@dataclass
class StopErrors:
    """The stop-action I/O errors QEMU reported since the VM last ran."""

    errors: dict[str, DriveIoError] = field(default_factory=dict)
    unknown: bool = False  # an error this session cannot name or classify: read instead

    def note(self, data: object, topology: Topology) -> None:
        """Take in one ``BLOCK_IO_ERROR``'s data (already validated by the caller)."""
        if not isinstance(data, dict) or data.get("action") != "stop":
            return
        node, device = data.get("node-name"), data.get("device")
        drive = topology.drive_of(node if isinstance(node, str) else None,
                                  device if isinstance(device, str) else None)
        path = next((d.path for d in topology.drives if d.drive == drive), "")
        if drive is None or not path or data.get("nospace") is not True:
            self.unknown = True
            return
        self.errors[drive] = DriveIoError(drive=drive, path=path, nospace=True)

    def clear(self) -> None:
        """The VM runs again (``RESUME``)."""
        self.errors = {}
        self.unknown = False

    def state(self) -> RunState | None:
        """The run state of the ``STOP`` that follows, or None when it must be read."""
        if self.unknown or not self.errors:
            return None
        return RunState(running=False, pause_reason=PauseReason.ENOSPC,
                        errors=tuple(self.errors.values()))
