"""The source's half of an ENOSPC pause's handoff: which pauses this host claims now.

A claim says "this host paused VM X for ENOSPC on volume V; it is this host's to end"
(``spm/handoff.py`` has the record's entries and the argument; ``monitor/handoff.py`` the
destination's half). :class:`ClaimBook` derives the claims from the VMs' machines whenever
the in-use publisher asks (every 2 s), never keeps a count of its own:

* a VM claims while its machine holds ``claimed_at`` (``vmstate.VmMachine._keep_claim``: it
  entered an ENOSPC pause autoextend owns, and has not run or been paused for another reason
  since, except by its own migration) and autoextend knows which managed drives ran out
  (``full_drives``), with no stale view held (those are never resumed);
* each pause gets one identity, this host's wall clock in µs when the book first saw it
  (strictly increasing within the process), kept while ``claimed_at`` is the same;
* a VM that migrated out keeps claiming for :data:`RETAIN_S` after the book first saw it
  departed (or dropped while migrating): the destination needs a record written after the
  guest arrived. Never longer: the destination's tombstone outlives it
  (``spm/handoff.py``: ``TOMBSTONE_S > RETAIN_S``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from autoextend.clock import Clock
from autoextend.monitor.context import VmView
from autoextend.monitor.migration import MigState
from autoextend.volumes import VolumeRef

RETAIN_S = 120.0


@dataclass(frozen=True, order=True)
class OwnPause:
    """One claim of this host: the VM, a volume that ran out, the pause's identity."""

    vm: str
    volume: VolumeRef
    pause_id: int


class ClaimBook:
    def __init__(self, clock: Clock,
                 wall_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self._clock = clock
        self._wall_us = wall_us
        self._ids: dict[str, tuple[float, int]] = {}  # vm -> (claimed_at, pause id)
        self._last_id = 0
        self._departed: dict[str, float] = {}         # vm -> when its claims lapse
        self._retained: dict[str, tuple[tuple[OwnPause, ...], float]] = {}

    def current(self, vms: Iterable[VmView]) -> list[OwnPause]:
        """Every claim to publish now."""
        now = self._clock.now()
        out: list[OwnPause] = []
        live: set[str] = set()
        for vm in vms:
            live.add(vm.name)
            claims = self._claims(vm, now)
            out.extend(claims)
        for name, (claims, lapses) in list(self._retained.items()):
            if now >= lapses or name in live:
                del self._retained[name]
            else:
                out.extend(claims)
        for name in [n for n in self._ids if n not in live and n not in self._retained]:
            del self._ids[name]
        return sorted(out)

    def departed(self, vm: VmView) -> None:
        """The VM is gone from this host: keep its claims for a while if it migrated."""
        m = vm.machine
        if m.migration is MigState.NONE:
            return
        claims = self._claims(vm, self._clock.now())
        if claims:
            lapses = self._departed.pop(vm.name, self._clock.now() + RETAIN_S)
            self._retained[vm.name] = (claims, lapses)

    def _claims(self, vm: VmView, now: float) -> tuple[OwnPause, ...]:
        m = vm.machine
        if m.claimed_at is None or not m.full_drives or m.stale_views:
            self._departed.pop(vm.name, None)
            return ()
        if m.migration is MigState.DEPARTED:
            lapses = self._departed.setdefault(vm.name, now + RETAIN_S)
            if now >= lapses:
                return ()
        else:
            self._departed.pop(vm.name, None)
        pause_id = self._pause_id(vm.name, m.claimed_at)
        volumes = sorted({vm.drives[d].volume for d in m.full_drives if d in vm.drives})
        return tuple(OwnPause(vm.name, v, pause_id) for v in volumes)

    def _pause_id(self, name: str, claimed_at: float) -> int:
        known = self._ids.get(name)
        if known is not None and known[0] == claimed_at:
            return known[1]
        self._last_id = max(self._last_id + 1, self._wall_us())
        self._ids[name] = (claimed_at, self._last_id)
        return self._last_id
