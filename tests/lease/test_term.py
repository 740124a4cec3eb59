"""The shared SPM term and its fence (autoextend/lease/term.py), on a manual clock.

The invariant: the body of spm() runs only while the term is valid; check() raises from the
instant the lease may be lost (expiry) or the term ended, whether or not the guard has run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.lease.config import LeaseSettings
from autoextend.lease.sanlock_engine import SanlockEngine, SanlockTerm
from autoextend.lease.service import LeaseService, SpmTerm
from autoextend.lease.term import Term, TermHolder
from autoextend.logs import get_logger
from autoextend.sectorfakes import MemoryStorage

MiB = 1 << 20


class Holder(TermHolder[Term]):
    """A lease engine reduced to the hooks: the lease is free unless held off."""

    def __init__(self, expiry: float) -> None:
        self.manual = ManualClock(100.0)
        self.clock = self.manual
        self.log = get_logger("test-term")
        self._term = None
        self._hold_off_until = 0.0
        self.expiry = expiry
        self.lver = 0
        self.fenced: list[Term] = []
        self.finished: list[tuple[Term, bool]] = []

    async def _start_term(self) -> Term:
        await self.clock.sleep(self._hold_off_until - self.clock.now())
        self.lver += 1
        self._term = Term(1, self.lver, lambda: self.expiry, self.clock)
        return self._term

    async def _finish_term(self, term: Term) -> None:
        self.finished.append((term, self._term is term))
        self._term = None

    def _fence_at_expiry(self, term: Term) -> None:
        self.fenced.append(term)
        term.end("expired")

    def _default_hold_off(self) -> float:
        return 5.0


@dataclass
class Body:
    """What a body run inside spm() saw: the term on entry, and again once cancelled."""

    entered: anyio.Event = field(default_factory=anyio.Event)
    terms: list[Term] = field(default_factory=list)


async def _body(holder: Holder, body: Body) -> None:
    async with holder.spm() as term:
        body.terms.append(term)
        body.entered.set()
        await anyio.sleep_forever()
    body.terms.append(term)  # reached only once spm() cancelled the body and released


@asynccontextmanager
async def _spm_body(holder: Holder, *, wait_entered: bool = True) -> AsyncIterator[Body]:
    """Run a body in ``holder.spm()``; leaving the block waits until the body is done."""
    body = Body()
    with anyio.fail_after(30):  # a guard that never fences would hang the test
        async with anyio.create_task_group() as tg:
            tg.start_soon(_body, holder, body)
            if wait_entered:
                await body.entered.wait()
            yield body


async def test_guard_fences_at_expiry_and_follows_renewals() -> None:
    holder = Holder(expiry=110.0)
    async with _spm_body(holder) as body:
        term = body.terms[0]
        assert holder.term is term and term.valid
        holder.manual.advance(9.0)
        holder.expiry = 120.0  # a renewal moves the expiry on
        holder.manual.advance(1.0)
        await anyio.wait_all_tasks_blocked()
        assert len(body.terms) == 1 and holder.fenced == [] and term.valid
        holder.manual.advance(10.0)
    assert body.terms == [term, term] and holder.fenced == [term]
    assert term.ended == "expired" and holder.finished == [(term, True)]
    assert holder.term is None
    with pytest.raises(NotSpmError, match="ended: expired"):
        term.check()


async def test_step_down_wakes_the_guard_and_holds_off() -> None:
    holder = Holder(expiry=1e9)
    async with _spm_body(holder) as body:
        holder.step_down()  # no clock movement: end() alone wakes the guard
    term = body.terms[0]
    assert body.terms == [term, term] and term.ended == "stepped down" and holder.fenced == []
    assert holder._hold_off_until == 105.0
    async with _spm_body(holder, wait_entered=False) as body:
        holder.manual.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert not body.entered.is_set()  # still held off
        holder.manual.advance(0.1)
        await body.entered.wait()
        assert body.terms[0].lver == 2
        holder.step_down(0.0)
    assert holder._hold_off_until == 105.0 and body.terms[0].ended == "stepped down"


async def test_leaving_the_body_ends_the_term() -> None:
    holder = Holder(expiry=1e9)
    async with holder.spm() as term:
        term.check()
    assert term.ended == "left" and holder.finished == [(term, True)] and holder.term is None


@given(expiry=st.floats(0, 200), now=st.floats(0, 200), ended=st.one_of(st.none(), st.text()))
def test_check_raises_exactly_when_not_valid(expiry: float, now: float,
                                             ended: str | None) -> None:
    clock = ManualClock(now)
    term = Term(1, 7, lambda: expiry, clock)
    if ended is not None:
        term.end(ended)
    assert term.valid == (ended is None and now < expiry)
    if term.valid:
        term.check()
    else:
        with pytest.raises(NotSpmError, match="lver 7"):
            term.check()


def test_the_first_end_reason_sticks() -> None:
    term = Term(1, 3, lambda: 1e9, ManualClock())
    term.end("stepped down")
    term.end("left")
    assert term.ended == "stepped down"


def test_term_check_is_off_only_in_the_engine_built_without_it() -> None:
    """The simulation's term-check mutant builds its engine with ``Checks(term_check=False)``:
    that engine's terms pass check() whatever their state; every other engine, and every
    term class, still enforces (there is no class-level switch left to flip)."""
    clock = ManualClock(100.0)
    storage, settings = MemoryStorage(8 * MiB), LeaseSettings(path="/p", host_id=1)
    mutant = LeaseService(storage, settings, clock, checks=Checks(term_check=False))
    native = LeaseService(storage, settings, clock)
    engine = SanlockEngine(LeaseSettings(path="/p", host_id=1, engine="sanlock",
                                         io_timeout_s=1.0), 512, clock)
    off = SpmTerm(mutant, 1, 1)  # every term below is past its expiry
    off.check()
    off.end("stepped down")
    off.check()
    for term in (SpmTerm(native, 1, 1), SanlockTerm(engine, 2), Term(1, 1, lambda: 0.0, clock)):
        with pytest.raises(NotSpmError, match="may have expired"):
            term.check()
    for cls in (Term, SpmTerm, SanlockTerm):
        assert "_enforce" not in vars(cls)
    assert native.checks == ALL_ON and engine.checks == ALL_ON
