"""When the drive poll may send its ``query-block``: in a quiet moment of the VM's session.

QEMU 7.2 sends no event for a hot-plugged disk, so each VM's session compares its drive
list every ``drive_watch_interval_s`` (``qmp/session.py: watch_drives``). That poll is the
one command on a VM's connection that nothing in the monitor asks for, and it used to land
inside a resume: between an extension's OK and its ``cont`` (issue 30's bench: 1 window in
120 held a fourth command, the poll's). QEMU answers commands one at a time on its main
loop, so a ``query-block`` of a VM with many drives there delays the ``cont`` behind it.

The poll therefore waits, after its period, until none of these holds (:meth:`PollGate.busy`):

- the VM is stopped for lack of space (a stop-action ENOSPC error, no ``RESUME`` since): its
  resume is on its way;
- a drive's threshold fired and has not been re-armed, for at most one period after the poll
  first saw it: its extension is on its way, and the re-arm ends it (a drive left unarmed at
  its cap does not hold the poll for longer);
- a command was sent on the connection in the last ``QUIET_S``: the monitor is at work on
  the VM (a re-arm, a throttle, a ``cont`` still to come).

It polls anyway ``DEFER_PERIODS`` periods after it first waited, so a VM that is never quiet
is still polled. Nothing here is needed for safety: a drive plugged since the last poll is
not armed yet, so its first ENOSPC, or the monitor's next look, finds it (``qmp/config.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from autoextend.clock import Clock

#: No command on the connection for this long is a quiet moment.
QUIET_S = 0.25
#: The poll waits at most this many periods for a quiet moment, then polls anyway.
DEFER_PERIODS = 3


@dataclass
class PollGate:
    """The crossings not yet re-armed, and when the poll first saw each (one VM)."""

    crossed: set[str] = field(default_factory=set)
    _seen_at: dict[str, float] = field(default_factory=dict)

    def cross(self, drive: str) -> None:
        """A ``BLOCK_WRITE_THRESHOLD`` for ``drive``: its extension is on its way."""
        self.crossed.add(drive)

    def rearm(self, drive: str) -> None:
        """``block-set-write-threshold`` sent for ``drive``."""
        self.crossed.discard(drive)
        self._seen_at.pop(drive, None)

    def busy(self, now: float, period_s: float, stopped: bool, commands_meanwhile: bool) -> bool:
        """Whether the poll must wait another quiet interval (pure but for the first-seen
        times of crossings it records)."""
        for drive in self.crossed:
            self._seen_at.setdefault(drive, now)
        pending = any(now - self._seen_at[d] < period_s for d in self.crossed)
        return stopped or pending or commands_meanwhile

    async def quiet_moment(self, clock: Clock, period_s: float, executed: Callable[[], int],
                           stopped: Callable[[], bool]) -> None:
        """Return at the first quiet moment, or ``DEFER_PERIODS`` periods from now.

        ``executed()`` is the connection's count of commands sent, ``stopped()`` whether the
        VM is stopped for lack of space."""
        give_up = clock.now() + DEFER_PERIODS * period_s
        while clock.now() < give_up:
            before = executed()
            await clock.sleep(QUIET_S)
            if not self.busy(clock.now(), period_s, stopped(), executed() != before):
                return
