"""GROW-PV's gate: ``pvresize`` only once every live host sees the larger device (pure).

The SPM sees a PV's device grown (``pvs``: ``dev_size`` holds more extents than the PV
has). Other hosts may not yet: a LUN grown on the array shows on a host only after that
host rescans it. An LV extended into the new extents would then fail I/O on such a host
past the end its kernel knows. So before ``pvresize`` the SPM reads every host's in-use
record (``inuse.py``: its *device views*, ``{hash of pv uuid: bytes}``, published every
2 s) and refuses while any host the lease does not see FREE or DEAD (a dead host is fenced,
a free id runs nothing) lists, for a PV that would grow, a size below the one the SPM sees,
or does not list the PV, or its record is unreadable, missing or of another generation.

**Why one look suffices (no freshness wait, unlike a reduce).** A device's size as a
host's kernel sees it only grows (shrinking a LUN under a VG is not supported). A record
that lists a size ``>= S`` was therefore collected when the host saw at least ``S``, and the
host sees at least ``S`` from then on: a stale record can only *under*-state the host's
view, which refuses (the safe side), never over-state it. The SPM still waits a few publish
periods for the views to catch up before it answers (``execute.py``), so ``pool grow`` right
after a rescan on every host succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from autoextend.spm import inuse

WAIT_PERIODS = 3  # the SPM waits this many publish periods (+ the margin) for the views


class PvView(Protocol):
    """A PV as the SPM's ``pvs`` reports it (``lvm/report.py: PvGrowth``)."""

    @property
    def name(self) -> str: ...

    @property
    def uuid(self) -> str: ...

    @property
    def device_size(self) -> int: ...

    @property
    def room(self) -> int: ...

    @property
    def extent_count(self) -> int: ...


def growing(pvs: Sequence[PvView]) -> list[PvView]:
    """The PVs ``pvresize`` would grow."""
    return [pv for pv in pvs if pv.room > pv.extent_count]


def grow_refusal(pvs: Sequence[PvView], look: inuse.Look,
                 states: Mapping[int, tuple[str, int]]) -> str | None:
    """Why the PVs of ``pvs`` that grew must not be resized now, or None (pure): the first
    live host, in id order, whose view is unknown or smaller (one line naming it)."""
    grown = growing(pvs)
    if not grown:
        return None
    for host in sorted(states):
        state, generation = states[host]
        if state in inuse.HOST_GONE:
            continue
        rec = look.get(host)
        if isinstance(rec, str):
            return f"host {host}'s in-use record is unreadable ({rec}); retry later"
        if rec is None:
            return f"host {host} ({state}) has not published its view of the PVs; retry later"
        if generation and rec.generation and rec.generation != generation:
            return (f"host {host}'s in-use record is from another run (generation"
                    f" {rec.generation}, lease {generation}); retry later")
        for pv in grown:
            seen = rec.sees(pv.uuid)
            if seen is None:
                return (f"host {host} does not list PV {pv.name} (uuid {pv.uuid}): its view"
                        " of the device is unknown (an older autoextend there, or a backend"
                        " without PVs); not resized")
            if seen < pv.device_size:
                # The host and what to do first: the reply's text field holds 100 bytes
                # (spm/wire.py), and a PV's path can take most of them.
                return (f"host {host}: rescan PV {pv.name} there, then run pool grow again"
                        f" (it sees {seen} B, the SPM {pv.device_size} B)")
    return None
