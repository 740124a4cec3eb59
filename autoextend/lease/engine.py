"""The lease engine boundary: what the rest of the service needs of a lease manager.

Two engines implement it (``[lease] engine``):

* ``native`` (:class:`autoextend.lease.service.LeaseService`): autoextend's own delta and
  Disk Paxos leases in the lease area, read and written by this process;
* ``sanlock`` (:class:`autoextend.lease.sanlock_engine.SanlockEngine`): a lockspace (host
  ids) and a resource (the SPM lease) of the local sanlock daemon, through libsanlock.

Either way the service sees the same three things:

* ``joined()``: this host holds its host id while the body runs;
* ``host_states()``: every known host's liveness (the mailbox's live set, ``spm status``);
* ``spm()``: waits until this host holds the SPM lease and yields its term; the body is
  cancelled before the lease could be lost, and ``term.check()`` (no I/O) raises
  :class:`~autoextend.errors.NotSpmError` from the instant the lease may be lost on, so the
  writer checks it before every metadata change. ``term.lver`` is the lease version.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock
from autoextend.lease.config import LeaseSettings
from autoextend.lease.liveness import HostStatus
from autoextend.lease.timeouts import LeaseTimeouts
from autoextend.sectors import SectorStorage


class SpmLease(Protocol):
    """One tenure as SPM (an :class:`~autoextend.volumes.SpmAuthority`)."""

    @property
    def lver(self) -> int: ...

    @property
    def expiry(self) -> float:
        """The instant (engine clock) from which the lease may be lost."""
        ...

    @property
    def valid(self) -> bool: ...

    def check(self) -> None:
        """Raise NotSpmError unless the term is still valid now. No I/O."""
        ...


class LeaseEngine(Protocol):
    @property
    def host_id(self) -> int: ...

    @property
    def host_name(self) -> str: ...

    @property
    def timeouts(self) -> LeaseTimeouts: ...

    def joined(self) -> AbstractAsyncContextManager[object]:
        """Hold this host's id while the body runs."""
        ...

    def spm(self) -> AbstractAsyncContextManager[SpmLease]:
        """Wait for the SPM lease; the body is cancelled before it could be lost."""
        ...

    def step_down(self, hold_off_s: float | None = None) -> None:
        """End the current term (the lease is released) and stay out of the contest for a
        while so that another host takes over."""
        ...

    def set_spm_priority(self, value: object) -> None:
        """Apply a new ``[lease] spm_priority`` (a reload); "never" stops contending from
        the next election (a term in progress is kept). ValueError if not valid here."""
        ...

    @property
    def term(self) -> SpmLease | None:
        """The current term while it is valid."""
        ...

    def current_spm(self) -> tuple[int, int] | None:
        """(host_id, lver) of the SPM as last seen, or None."""
        ...

    async def read_spm(self) -> tuple[int, int] | None:
        """(host_id, lver) of the SPM lease's holder from a fresh read of the storage (or the
        daemon), or None when it is free. Changes nothing in the contest (``spm drill``)."""
        ...

    def host_states(self) -> dict[int, HostStatus]: ...

    @property
    def held(self) -> bool:
        """This host's id lease is held and not past its expiry."""
        ...

    def renewal_age(self) -> float | None:
        """Seconds since this host's last successful host id renewal (None: not joined)."""
        ...

    @property
    def record_errors(self) -> int:
        """Unreadable lease records seen (native), or 0."""
        ...


def make_engine(settings: LeaseSettings, storage: SectorStorage, clock: Clock,
                checks: Checks = ALL_ON) -> LeaseEngine:
    """The configured engine. ``storage`` is the metadata area (the native engine's I/O; the
    sanlock engine takes only its sector size: the daemon does the lease I/O). ``checks``:
    see ``autoextend/checks.py`` (all on, except in a test's negative control)."""
    if settings.engine == "sanlock":
        from autoextend.lease.sanlock_engine import SanlockEngine

        return SanlockEngine(settings, storage.sector_size, clock, checks)
    from autoextend.lease.service import LeaseService

    return LeaseService(storage, settings, clock, checks=checks)
