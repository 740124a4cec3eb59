"""The SPM term and its fence, shared by both lease engines (native and sanlock).

The invariant this module protects: **the body of ``spm()`` runs only while the term is
valid; ``check()`` raises from the instant the lease may be lost.** A term is valid until it
is ended (step-down, host id loss, leaving the body) or until its engine's expiry (the
instant from which the lease may be lost, on the engine's clock), whichever comes first.
:func:`guard` sleeps until that expiry, woken early by :meth:`Term.end`, then cancels the
body; :meth:`Term.check` does not wait for that cancellation to be delivered, it compares
the clock with the expiry itself (no I/O).

An engine subclasses :class:`TermHolder` and supplies the engine-specific steps as hooks
(acquire, release, what fencing at expiry logs and counts); the skeleton of ``spm()``, the
guard and ``step_down()`` live here only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import anyio

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock
from autoextend.errors import NotSpmError
from autoextend.logs import Logger

MUTANT_NAP_S = 3600.0  # the guard's sleep when the term check is off (mutant only)


class Term:
    """One tenure as SPM: lease version ``lver`` held by ``host_id``, valid until ``expiry()``
    (re-read at every use: renewals move it) or until ended."""

    def __init__(self, host_id: int, lver: int, expiry: Callable[[], float],
                 clock: Clock, checks: Checks = ALL_ON) -> None:
        self.host_id = host_id
        self.lver = lver
        self.ended: str | None = None
        self._expiry = expiry
        self._clock = clock
        self._wake: anyio.CancelScope | None = None
        # Protects this module's invariant (check() raises from the instant the lease may be
        # lost). Only the simulation's term-check mutant passes checks.term_check off.
        self._enforce = checks.term_check

    @property
    def expiry(self) -> float:
        return self._expiry()

    @property
    def enforced(self) -> bool:
        """Whether this term's check runs (always, but in the term-check mutant)."""
        return self._enforce

    @property
    def valid(self) -> bool:
        return self.ended is None and self._clock.now() < self.expiry

    def check(self) -> None:
        """Raise NotSpmError unless this term is still valid now. No I/O."""
        if not self._enforce:
            return
        if self.ended is not None:
            raise NotSpmError(f"SPM term lver {self.lver} ended: {self.ended}")
        if self._clock.now() >= self.expiry:
            raise NotSpmError(f"SPM term lver {self.lver}: lease may have expired")

    def end(self, reason: str) -> None:
        """End the term (the first reason sticks) and wake its guard."""
        if self.ended is None:
            self.ended = reason
        if self._wake is not None:
            self._wake.cancel()


TermT = TypeVar("TermT", bound=Term)


async def guard(term: TermT, clock: Clock, body: anyio.CancelScope,
                fence: Callable[[TermT], None]) -> None:
    """Sleep until the term's expiry (woken early by ``term.end``); at the expiry call
    ``fence(term)``, which must end the term; then cancel the body."""
    while term.ended is None:
        # The term-check mutant (checks.term_check off) turns off the check's timer too:
        # its term never ends by time, only by a step-down, a release or an error.
        remaining = term.expiry - clock.now() if term.enforced else MUTANT_NAP_S
        if remaining <= 0:
            fence(term)
            break
        with anyio.CancelScope() as wake:
            term._wake = wake
            await clock.sleep(remaining)
        term._wake = None
    body.cancel()


class TermHolder(Generic[TermT]):
    """The SPM scope of a lease engine: ``spm()``, ``step_down()`` and ``term``.

    The engine sets ``clock``, ``log``, ``_term = None`` and ``_hold_off_until = 0.0`` and
    implements the four hooks below.
    """

    clock: Clock
    log: Logger
    _term: TermT | None
    _hold_off_until: float

    async def _start_term(self) -> TermT:
        """Wait (honouring ``_hold_off_until``) until the lease is ours; make the term and
        set ``_term`` to it."""
        raise NotImplementedError

    async def _finish_term(self, term: TermT) -> None:
        """Release the lease and clear ``_term``, in the order the engine needs (runs
        shielded)."""
        raise NotImplementedError

    def _fence_at_expiry(self, term: TermT) -> None:
        """The guard found the term past its expiry: end it (log, count)."""
        raise NotImplementedError

    def _default_hold_off(self) -> float:
        raise NotImplementedError

    @asynccontextmanager
    async def spm(self) -> AsyncIterator[TermT]:
        """Wait until this host is SPM; the body is cancelled before the lease could be lost."""
        term = await self._start_term()
        self.log.info("SPM term started", lver=term.lver)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(guard, term, self.clock, tg.cancel_scope, self._fence_at_expiry)
                try:
                    yield term
                finally:
                    term.end(term.ended or "left")
                    tg.cancel_scope.cancel()
        finally:
            term.end(term.ended or "left")
            with anyio.CancelScope(shield=True):
                await self._finish_term(term)
            self.log.info("SPM term ended", lver=term.lver, reason=term.ended)

    def step_down(self, hold_off_s: float | None = None) -> None:
        """End the current SPM term (its body is cancelled, the lease released) and stay out
        of the contest for ``hold_off_s`` (default two renewal intervals) so another host
        takes over."""
        hold = self._default_hold_off() if hold_off_s is None else hold_off_s
        self._hold_off_until = self.clock.now() + hold
        if self._term is not None:
            self._term.end("stepped down")

    @property
    def term(self) -> TermT | None:
        """The current term while it is valid."""
        return self._term if self._term is not None and self._term.valid else None
