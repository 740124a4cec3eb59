"""Outgoing migrations known from events, before (and without) ``jobStats``.

Why: the source learns of its migration from libvirt's job (``virDomainGetJobStats``), a
QUERY job that waits behind the migration's own monitor calls. On this rig (libvirt 9.0,
TCG guests, two CPU hogs) it was seen to wait for minutes, and every refresh of the source's
extensions waits on the same call (``MigrationSteps.may_refresh``). libvirt announces the
transfer itself with no job: ``VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION``, sent on the
*source only*, for each of QEMU's ``MIGRATION_PASS`` events (the first at the start of the
first RAM pass, while the guest still runs), and only while the domain has a migration job.

The mark this module keeps is one-sided, and that is what makes it safe to trust without
asking: a mark says "migrating out", which only ever *stops* the source from refreshing its
view or resuming its guest (``monitor/migration.py``). A wrong mark costs liveness, never
the invariant. So:

- a MIGRATION_ITERATION event sets the VM's mark (and the monitor is told to ask again);
- the events that end a migration on the source clear it: STOPPED (completed: the domain
  went away), RESUMED (failed after the switchover's pause, or an operator's resume),
  JOB_COMPLETED; a reconnect clears every mark (events may have been missed);
- ``migration()`` answers "migrating out, active" from a mark at once, and hands the VM to
  the backend's verify task, which asks ``jobStats`` in the background: a migration that
  ended without any of those events (cancelled before the switchover) clears the mark
  there, and the monitor is told to ask again;
- with no mark, ``migration()`` asks ``jobStats`` but stops waiting as soon as a mark
  appears (the event usually comes long before a blocked ``jobStats`` answers).
"""

from __future__ import annotations

import anyio


class OutgoingMarks:
    """Per VM: the number of the migration iteration event that marked it, if any."""

    def __init__(self) -> None:
        self._marks: dict[str, int] = {}
        self._seq = 0  # every set gets a new number: a verify clears only what it saw
        self._changed = anyio.Event()

    def get(self, vm: str) -> int | None:
        return self._marks.get(vm)

    def set(self, vm: str) -> bool:
        """Mark ``vm`` as migrating out; True when it was not marked before."""
        new = vm not in self._marks
        self._seq += 1
        self._marks[vm] = self._seq
        self._changed.set()
        self._changed = anyio.Event()
        return new

    def clear(self, vm: str, seen: int | None = None) -> bool:
        """Drop ``vm``'s mark (only if it is still the one numbered ``seen``, when given);
        True when a mark was dropped."""
        mark = self._marks.get(vm)
        if mark is None or (seen is not None and mark != seen):
            return False
        del self._marks[vm]
        return True

    def clear_all(self) -> None:
        self._marks.clear()

    async def wait(self, vm: str) -> None:
        """Return once ``vm`` is marked (at once if it is)."""
        while vm not in self._marks:
            await self._changed.wait()
