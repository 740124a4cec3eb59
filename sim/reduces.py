"""The reduce path in the simulation (issue 34): hosts give space back through the SPM, across
SPM kills, freezes and storage faults, and what each host would print is checked against the
volume's size in the metadata.

Each host owns a few *idle* volumes (no guest runs on them: the host's own checks of
``capacity/reduce.py`` passed). One task per host works on them one request at a time: now
and then it grows one (an extend through the mailbox, as a guest would have caused), more
often it reduces one to a smaller size, through ``HostMailbox.request(op=OP_REDUCE)`` and
the real SPM server (``spm/reducing.py``). Nothing else changes these volumes, so at the
instant the host acts on an answer the metadata must say exactly what the answer says:

- **reply truth** (what the issue found broken): an OK reply's size is the volume's size,
  at or below the size asked; a refusal (REJECTED or FAILED) means the volume is unchanged
  since the request was sent. A new SPM that refused a reduce its predecessor had applied
  (the mutation ``reduce-idempotency`` drops that check) breaks this;
- **print truth**: what the host prints (``capacity.reduce.settle`` after a refusal or a
  timeout, reading the size again) names the volume's size: exit 0 only at or below the
  target, exit 1 only above it;
- **once**: one request shrinks its volume at most once; every shrink is to a size some
  reduce asked for (``World.check_change``), so never below its target.

- **never both** (issue 27 item 1, the in-use gate and its intent record, ``spm/
  inusegate.py``): every host runs the real in-use publisher, and the SPM the real gate.
  Now and then a host *claims* an idle volume of another host (``InUsePublisher.claim``, as
  ``volume prepare`` does before a guest opens it) and holds it for a while. A reduce that
  shrinks a volume while a live incarnation holds a successful claim on it fails the run
  (``ReduceTraffic.check_shrink``, called for every shrink).

A request that timed out (or an incarnation that crashed with one in flight) may still be
served by an SPM that took it up before it was withdrawn; until that SPM's term must have
ended, the host leaves the volume alone (``settle_s``), so the exactness above holds.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

from autoextend.capacity.reduce import ReduceRefused, ReduceUnanswered, settle
from autoextend.lease.liveness import HostState
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.host import HostMailbox
from autoextend.spm.reducing import REDUCE_CHECKS, ReduceCheck, already_applied
from autoextend.spm.wire import OP_EXTEND, OP_REDUCE, Status
from autoextend.volumes import VolumeRef

if TYPE_CHECKING:
    from autoextend.spm.inusepub import InUsePublisher
    from sim.host import Incarnation, SimClock
    from sim.world import World

MiB = 1 << 20
GiB = 1 << 30
IDLE_PER_HOST = 2
FLOOR = 256 * MiB             # reduces never ask below this
GROW_PROB = 0.3               # a step is an extend (else a reduce)
CRASH_AFTER_REDUCE_PROB = 0.1  # per applied reduce while faults are on: the SIGKILL
GAP_FACTOR = 2.0              # one step per host every 2 x request_gap_s on average
CLAIM_GAP_FACTOR = 6.0        # one claim per host every 6 x request_gap_s on average


def reduce_checks(mutation: str | None) -> tuple[ReduceCheck, ...]:
    """The SPM's reduce checks; the mutation ``reduce-idempotency`` leaves check 1 out
    (passed to ``SpmMailServer``'s constructor: the real code is not switched)."""
    if mutation == "reduce-idempotency":
        return tuple(c for c in REDUCE_CHECKS if c is not already_applied)
    return REDUCE_CHECKS


class ReduceTraffic:
    def __init__(self, world: World) -> None:
        self.world = world
        self.owner: dict[VolumeRef, int] = {}
        self.shrinks: dict[VolumeRef, int] = {}
        self.settled_at: dict[int, float] = {}  # host -> no request of it can land after
        self.claims: list[tuple[Incarnation, VolumeRef]] = []  # held, successful claims
        for h in range(1, world.cfg.hosts + 1):
            for k in range(IDLE_PER_HOST):
                vol = VolumeRef(("vg0", "vg1")[k % 2], f"h{h}-idle{k}")
                world.volumes.sizes[vol] = GiB
                world.volumes.caps[vol] = world.mailbox.max_request_bytes
                self.owner[vol] = h
        # After this, an SPM that took a request up before its host withdrew it has applied
        # it or lost its term (a frozen holder cannot write after its expiry).
        self.settle_s = world.takeover_bound

    def shrank(self, volume: VolumeRef, spm: Incarnation) -> None:
        self.shrinks[volume] = self.shrinks.get(volume, 0) + 1
        self.check_shrink(volume, spm)

    def check_shrink(self, volume: VolumeRef, spm: Incarnation) -> None:
        """Never both: no volume shrinks while a live incarnation holds a claim on it,
        unless the shrinking SPM's lease sees that host FREE or DEAD. The product's premise
        (``inusegate.py``): a dead host is fenced. The simulation does not fence a frozen
        host that is not SPM (it may thaw with its claim), so this check takes the premise
        as given rather than testing it."""
        w = self.world
        w.stats.checks += 1
        states = spm.lease.host_states() if spm.lease is not None else {}
        for inc, vol in self.claims:
            gone = (inc.host_id in states
                    and states[inc.host_id].state in (HostState.FREE, HostState.DEAD))
            if vol == volume and inc.alive and not gone:
                w.fail(f"{volume} shrank while {inc.name} held a claim on it (a guest there"
                       " may write past the new end)")

    def in_use_of(self, inc: Incarnation) -> Callable[[], Awaitable[Collection[str]]]:
        """The publisher's source: this host runs no guests of its own (its claims are
        listed by the publisher itself)."""
        async def none() -> list[str]:
            return []
        return none

    async def claimer(self, inc: Incarnation, publisher: InUsePublisher, clock: SimClock,
                      rng: random.Random) -> None:
        """Now and then claim another host's idle volume, hold it, let it go."""
        w = self.world
        others = sorted(v for v, h in self.owner.items() if h != inc.host_id)
        if not others:
            return
        while True:
            await clock.sleep(rng.expovariate(1.0 / (CLAIM_GAP_FACTOR * w.cfg.request_gap_s)))
            volume = rng.choice(others)
            refused = await publisher.claim(str(volume))
            if not inc.alive:
                return
            w.stats.checks += 1
            if refused is not None:
                w.trace(f"{inc.name} claim {volume} refused: {refused}")
                w.stats.claims_refused += 1
                continue
            w.trace(f"{inc.name} claim {volume} ({w.volumes.sizes[volume] // MiB} MiB)")
            w.stats.claims += 1
            held = (inc, volume)
            self.claims.append(held)
            try:
                await clock.sleep(rng.uniform(1.0, 4.0) * w.cfg.request_gap_s)
            finally:
                self.claims.remove(held)
            publisher.release(str(volume))
            w.trace(f"{inc.name} release {volume}")

    def maybe_crash_after_reduce(self, inc: Incarnation) -> None:
        """The issue's case: the SPM is killed after lvreduce, before its reply is written."""
        w = self.world
        if w.loop.time() < w.fault_end and w.rng_faults.random() < CRASH_AFTER_REDUCE_PROB:
            delay = w.rng_faults.uniform(0.1, 60.0)
            w._fault("crash-after-reduce", f"{inc.name} restart in {delay:.3f}")
            inc.crash(delay)

    async def requester(self, inc: Incarnation, mailbox: HostMailbox, clock: SimClock,
                        rng: random.Random) -> None:
        w = self.world
        mine = sorted(v for v, h in self.owner.items() if h == inc.host_id)
        # A previous incarnation's request may still be served: wait until it cannot be.
        await clock.sleep(max(0.0, self.settled_at.get(inc.host_id, 0.0) - clock.now()))
        while True:
            await clock.sleep(rng.expovariate(1.0 / (GAP_FACTOR * w.cfg.request_gap_s)))
            volume = rng.choice(mine)
            before = w.volumes.sizes[volume]
            if rng.random() < GROW_PROB or before - 64 * MiB < FLOOR:
                size, op = before + rng.randint(1, 4) * 64 * MiB, OP_EXTEND
            else:
                size = max(FLOOR, before - rng.randint(1, 6) * 64 * MiB)
                op = OP_REDUCE
            self.settled_at[inc.host_id] = clock.now() + w.answer_bound + self.settle_s
            if not await self.one(inc, mailbox, clock, volume, before, size, op):
                await clock.sleep(self.settle_s)
            self.settled_at[inc.host_id] = clock.now()

    async def one(self, inc: Incarnation, mailbox: HostMailbox, clock: SimClock,
                  volume: VolumeRef, before: int, size: int, op: int) -> bool:
        """One request and its checks; False when it may still be served later."""
        w = self.world
        w._next_req += 1
        rid = w._next_req
        started = clock.now()
        w.asked.add((volume, size))
        w.outstanding[rid] = (inc, volume, size, started)
        w.stats.requests += 1
        kind = "reduce" if op == OP_REDUCE else "grow"
        if op == OP_REDUCE:
            w.stats.reduces += 1
        shrinks = self.shrinks.get(volume, 0)
        w.trace(f"{inc.name} req#{rid} {kind} {volume} {before // MiB} -> {size // MiB} MiB")
        refusal: ReduceRefused | None = None
        try:
            reply = await mailbox.request(volume, size, op=op)
        except MailboxTimeout as exc:
            w.stats.timeouts += 1
            w.trace(f"{inc.name} req#{rid} timed out")
            if started >= w.last_fault + w.takeover_bound:
                w.fail(f"{inc.name} req#{rid} unanswered although faults stopped at "
                       f"{w.last_fault:.3f}")
            reply, refusal = None, ReduceUnanswered(volume, str(exc))
        except MailboxClosed:
            w.stats.closed += 1
            return False
        finally:
            w.outstanding.pop(rid, None)
        if not inc.alive:
            return False
        w.stats.checks += 1
        truth = w.volumes.sizes[volume]
        if reply is not None:
            w.trace(f"{inc.name} req#{rid} {reply.status.name} {reply.size // MiB} MiB "
                    f"{reply.text!r} (truth {truth // MiB})")
        if self.shrinks.get(volume, 0) - shrinks > 1:
            w.fail(f"{inc.name} req#{rid} {volume} reduced more than once by one request")
        if op == OP_EXTEND:
            if reply is not None and reply.status is Status.OK and truth < size:
                w.fail(f"{inc.name} req#{rid} grow {volume} OK but the volume is {truth}")
            return reply is not None
        if reply is not None and reply.status is Status.OK:
            if truth < before:
                w.stats.reduced += 1
            if reply.size != truth or truth > size:
                w.fail(f"{inc.name} req#{rid} reduce {volume} to {size}: OK {reply.size} but "
                       f"the volume is {truth}")
            return True
        if reply is not None:
            w.stats.reduce_refused += 1
            if truth != before:
                w.fail(f"{inc.name} req#{rid} reduce {volume} to {size}: "
                       f"{reply.status.name} {reply.text!r} but the volume changed "
                       f"{before} -> {truth}")
            refusal = ReduceRefused(volume, f"the SPM refused: {reply.text}")
        assert refusal is not None
        try:  # what the host prints: the size read again
            printed, _ = settle(volume, before, size, refusal, truth)
            ok = True
        except ReduceRefused as final:
            printed, ok = truth, False
            if f"{truth / MiB:.1f} MiB" not in final.reason:
                w.fail(f"{inc.name} req#{rid} printed {final.reason!r}; the volume is {truth}")
        if ok != (truth <= size) or printed != truth:
            w.fail(f"{inc.name} req#{rid} printed exit {0 if ok else 1} size {printed}; the "
                   f"volume is {truth} (target {size})")
        return reply is not None
