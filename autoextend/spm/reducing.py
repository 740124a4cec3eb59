"""The SPM's side of a reduce: the same verdict for a real reduce and for its dry run, in
every term.

A reduce, unlike an extend, loses data if it is applied to a volume a guest is writing
past the asked size, and it cannot be undone. So the SPM asks a fixed list of questions
(:data:`REDUCE_CHECKS`, pure functions of :class:`ReduceFacts`) before it acts, and a
REDUCE_CHECK request (``wire.OP_REDUCE_CHECK``, what ``volume reduce --dry-run`` sends)
gets the answer of those very questions without the action: a dry run and the reduce it
predicts cannot disagree unless the facts change in between (an extend asked, a term ending).

The checks, in order; the first that answers decides:

1. **already applied** (idempotency): the volume is at or below the asked size. Nothing is
   to be done, so nothing can be unsafe: answer OK with the size. This is what makes a reduce
   exact across SPM terms, like an extend ("to at least size"): the old SPM may have run
   lvreduce and died before its reply reached the disk; the request is still in the host's
   box, and the new SPM, which cannot tell, finds the volume already reduced and says so.
   A request whose reply is on disk is never served again at all (``replybox.py`` loads the
   reply boxes before the server serves: the host reads the old SPM's reply).
2. **fresh term**: this SPM took over less than ``hot_window_s`` ago. Extends asked of the
   previous SPM are not known here, so a reduce *not yet applied* is refused; check 1 came
   first, so an applied one is never refused by this rule.
3. **hot volume**: some host asked to extend the volume within ``hot_window_s``.

Invariant: the SPM changes a volume for a REDUCE only when every check passed, and the
volume's backend change is "to exactly the asked size, never grow" (``VolumeBackend.reduce``): a
volume is never reduced below the size a host asked for, and a second serving of the same
request finds it done (check 1), so it is not reduced twice.

An answer the host may have read is never contradicted by a later action on the same request.
A reply whose write failed may still land (a timed-out write can be a late write), and the
server then serves the request again: it is answered with the verdict it got before
(``ReduceDesk.given``), so a refused reduce is not applied later in the same term (found by the
simulation: a refusal written late, then the reduce applied on the second serving, after the
young-term window had passed). A new term reads the reply boxes before it serves anything,
and by then every late write of the previous term has landed (an I/O is bounded well below
the lease expiry, as fencing already assumes): a request answered on disk is not served
again.

4. **in use on a host**: some host that is not known dead lists the volume in its in-use
   record, or a record needed to know is stale or unreadable (``inusegate.py``, which also
   argues the race with a host opening the volume meanwhile). Only when the server was
   given an in-use gate (mailbox mode: the cluster agent always gives one); the dry run
   asks it too (one look, no freshness rule).
The checks are passed to :class:`ReduceDesk` by its owner (the server's constructor, through
the executor): the simulation's mutation check (``sim/``) leaves check 1 out that way, never
by switching a class attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoextend import logs
from autoextend.clock import Clock
from autoextend.spm.inuse import Look
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.journal import Op
from autoextend.spm.journalring import JournalWriter
from autoextend.spm.wire import OP_REDUCE_CHECK, ReasonCode, Request, Status
from autoextend.volumes import SpmAuthority, VolumeBackend, VolumeRef

log = logs.get_logger("spm.server")


@dataclass(frozen=True)
class ReduceFacts:
    """What the SPM knows when it judges one reduce (all read before the checks run)."""

    volume: VolumeRef
    asked: int                      # the size the host asked for
    size: int                       # the volume's size now (the SPM's backend)
    term_age_s: float               # how long ago this SPM's term started
    extend_age_s: float | None      # since the last extend request for it (this term)
    extend_host: int                # who asked that extend
    hot_window_s: float
    in_use: str | None = None       # why a host's in-use record forbids it (inusegate.py)


@dataclass(frozen=True)
class Verdict:
    status: Status
    size: int = 0
    reason: ReasonCode = ReasonCode.NONE
    text: str = ""


ReduceCheck = Callable[[ReduceFacts], Verdict | None]


def already_applied(f: ReduceFacts) -> Verdict | None:
    """Check 1: the volume is at or below the asked size: done (OK with the size)."""
    if f.size <= f.asked:
        return Verdict(Status.OK, f.size, text="already at or below the size asked")
    return None


def fresh_term(f: ReduceFacts) -> Verdict | None:
    """Check 2: extends asked of the previous SPM are not known to this one yet."""
    if f.term_age_s < f.hot_window_s:
        return Verdict(Status.REJECTED, reason=ReasonCode.VOLUME_BUSY,
                       text=f"this SPM took over {f.term_age_s:.0f} s ago: extends asked"
                            " before are not known here; retry later")
    return None


def hot_volume(f: ReduceFacts) -> Verdict | None:
    """Check 3: a host asked to extend the volume within the hot window."""
    if f.extend_age_s is not None and f.extend_age_s < f.hot_window_s:
        return Verdict(Status.REJECTED, reason=ReasonCode.VOLUME_BUSY,
                       text=f"host {f.extend_host} asked to extend it"
                            f" {f.extend_age_s:.0f} s ago")
    return None


def in_use_on_a_host(f: ReduceFacts) -> Verdict | None:
    """Check 4: a host has it open, or its in-use record cannot say (``inusegate.py``)."""
    if f.in_use is not None:
        return Verdict(Status.REJECTED, reason=ReasonCode.VOLUME_BUSY, text=f.in_use)
    return None


GIVEN_MAX = 4096  # verdicts remembered per term (a reply write is retried within seconds)

REDUCE_CHECKS: tuple[ReduceCheck, ...] = (already_applied, fresh_term, hot_volume,
                                          in_use_on_a_host)


def judge(facts: ReduceFacts, checks: Sequence[ReduceCheck] = REDUCE_CHECKS) -> Verdict | None:
    """The first check's answer, or None: the reduce may be applied (pure)."""
    for check in checks:
        verdict = check(facts)
        if verdict is not None:
            return verdict
    return None


class ReduceDesk:
    """One SPM term's reduce bookkeeping (owned by ``SpmMailServer``): when the term started,
    the last extend asked per volume, the checks and the verdicts given. The executor
    (``execute.py``) calls :meth:`extend_asked` before every extend is served, and
    :meth:`given`, :meth:`judge_and_act` and :meth:`remember` for REDUCE and REDUCE_CHECK
    requests, with the VG's lock held for both."""

    def __init__(self, backend: VolumeBackend, authority: SpmAuthority, clock: Clock,
                 hot_window_s: float, checks: Sequence[ReduceCheck] = REDUCE_CHECKS,
                 in_use: InUseGate | None = None,
                 journal: JournalWriter | None = None) -> None:
        self._backend = backend
        self.in_use = in_use
        self._journal = journal
        self._authority = authority
        self._clock = clock
        self.hot_window_s = hot_window_s
        self._checks = tuple(checks)
        self._term_started = clock.now()  # what was asked before is not known here
        self._extends: dict[VolumeRef, tuple[float, int]] = {}
        # (host, generation, request id) -> the verdict given (oldest dropped past GIVEN_MAX)
        self._given: dict[tuple[int, int, int], Verdict] = {}

    def extend_asked(self, volume: VolumeRef, host: int) -> None:
        self._extends[volume] = (self._clock.now(), host)

    async def facts(self, volume: VolumeRef, asked: int,
                    first_look: Look | None = None) -> ReduceFacts:
        """``first_look``: the in-use records read before the settle (None: a dry run)."""
        size = await self._backend.metadata_size(volume)
        in_use = (None if self.in_use is None or size <= asked
                  else await self.in_use.refusal(str(volume), first_look))
        now = self._clock.now()
        when, host = self._extends.get(volume, (None, 0))
        return ReduceFacts(volume, asked, size, now - self._term_started,
                           None if when is None else now - when, host, self.hot_window_s,
                           in_use)

    def given(self, host: int, generation: int, req: Request) -> Verdict | None:
        """The verdict this term gave the request before, if any: a request served again
        gets it again (a reply write that failed may still land late)."""
        return self._given.get((host, generation, req.request_id))

    def remember(self, host: int, generation: int, req: Request, verdict: Verdict) -> None:
        """Record the verdict given (whatever it is, an error's too; the oldest go first)."""
        self._given[(host, generation, req.request_id)] = verdict
        while len(self._given) > GIVEN_MAX:
            del self._given[next(iter(self._given))]

    async def judge_and_act(self, host: int, req: Request,
                            first_look: Look | None = None, generation: int = 0) -> Verdict:
        """The answer to a REDUCE (acting on it when every check passed) or a REDUCE_CHECK
        (never acting). What the backend raises goes up: the executor turns it into the
        verdict (``execute.py``, the one ladder of every op). Raises NotSpmError when the
        term is lost (checked right before the reduce)."""
        volume = VolumeRef(req.vg, req.lv)
        facts = await self.facts(volume, req.size, first_look)
        verdict = judge(facts, self._checks)
        if verdict is not None or req.op == OP_REDUCE_CHECK:
            return verdict or Verdict(Status.OK, req.size, text="would reduce")
        self._authority.check()
        result = await self._backend.reduce(volume, req.size)
        log.info("volume reduced" if result.changed else "volume already that small",
                 volume=str(volume), host_id=host, request_id=req.request_id,
                 size=result.size, before=facts.size)
        if result.changed and self._journal is not None:
            await self._journal.note(Op.REDUCE, volume, facts.size, result.size, host=host,
                                     request_id=req.request_id, generation=generation)
        return Verdict(Status.OK, result.size)
