"""Detect any other writer of the pool's VG metadata (a *foreign write*).

The seed: "create, remove, extend are VG MD writes – simultaneous writes will cause MD
corruption"; the SPM must be the one metadata writer. autoextend cannot stop another process
from running ``lvcreate`` on a pool VG, but it can see it: lvm2 raises a VG's ``vg_seqno`` by
one on every metadata commit, so the writer knows what ``vg_seqno`` to expect.

**The ledger.** :class:`WriteLedger` is shared by this process's writers (one
:class:`~autoextend.lvm.writer.LvmWriter` per SPM term) and the audit. A writer calls
:meth:`begin` before each metadata command and :meth:`end` after it (with its per-VG lock
held, so at most one command per VG is in flight from this process), saying whether the
command committed. The audit (:class:`ForeignWriteAudit`, every capacity poll) reads
``vg_seqno`` of every VG, and for a VG whose seqno moved, the seqno and the LV list from one
``lvs`` report; :meth:`WriteLedger.audit` compares:

- a look is judged only if none of our commands was in flight when the audit took its
  :meth:`mark` (before the read) and none ran until the judgement: then the read includes
  exactly the commits counted in ``done``. Otherwise it is inconclusive and the next poll
  looks again (an ``lvextend`` takes ~50 ms, a poll is 0.5 s: rarely more than one);
- the first judged look in a writer's life sets the baseline (``base``): what came before
  was another term's, or before this process started;
- afterwards the VG is at most at ``base + done`` (``done``: our commits since). Anything
  higher is a foreign write: nothing of ours can raise ``vg_seqno`` without being counted,
  since every command of ours is in ``pending`` from before it runs until it is in ``done``;
- a foreign write is reported once, with the LV difference against the last judged look
  (appeared, vanished, resized; ours in between are in it too), and the baseline moves to
  what was seen.

Only a host that is the writer audits: in local mode always, in mailbox mode while it holds
the SPM term (:meth:`active` checks the term). A new term starts a new baseline, so the
previous SPM's commits are never taken for foreign ones. Known limit: a foreign write between
a term's start and its first look is absorbed in the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoextend import logs
from autoextend.errors import AutoextendError, NotSpmError
from autoextend.lvm import report
from autoextend.volumes import SpmAuthority

log = logs.get_logger("lvm")


@dataclass(frozen=True)
class ForeignWrite:
    vg: str
    expected: int                        # the highest vg_seqno our own commands explain
    observed: int
    appeared: tuple[str, ...] = ()
    vanished: tuple[str, ...] = ()
    resized: tuple[tuple[str, int, int], ...] = ()   # (lv, old size, new size)

    def describe(self) -> str:
        parts = [f"+{lv}" for lv in self.appeared] + [f"-{lv}" for lv in self.vanished]
        parts += [f"{lv} {old >> 20}->{new >> 20} MiB" for lv, old, new in self.resized]
        changes = ", ".join(parts) if parts else "no LV added, removed or resized"
        return (f"VG {self.vg}: metadata changed by another writer (vg_seqno {self.observed}, "
                f"ours explain {self.expected}): {changes}")


def lv_diff(before: Mapping[str, int], after: Mapping[str, int]) -> tuple[
        tuple[str, ...], tuple[str, ...], tuple[tuple[str, int, int], ...]]:
    """(appeared, vanished, resized) LVs between two {lv: size} looks, each sorted."""
    appeared = tuple(sorted(set(after) - set(before)))
    vanished = tuple(sorted(set(before) - set(after)))
    resized = tuple((lv, before[lv], after[lv]) for lv in sorted(set(before) & set(after))
                    if before[lv] != after[lv])
    return appeared, vanished, resized


@dataclass
class _Vg:
    base: int | None = None
    done: int = 0
    pending: int = 0
    lvs: dict[str, int] = field(default_factory=dict)


class WriteLedger:
    """What this process's writers committed, per VG (see the module docstring)."""

    def __init__(self) -> None:
        self._vgs: dict[str, _Vg] = {}
        self._authority: SpmAuthority | None = None
        self.foreign_writes = 0
        self.last: ForeignWrite | None = None
        self.epoch = 0   # moves with each writer: the audit's looks start again

    def writer_started(self, authority: SpmAuthority) -> None:
        """A writer (a new SPM term, or the local writer) starts: new baselines."""
        self._authority = authority
        self._vgs = {}
        self.epoch += 1

    def active(self) -> bool:
        """This host is the writer now (its authority holds)."""
        if self._authority is None:
            return False
        try:
            self._authority.check()
        except NotSpmError:
            return False
        return True

    def begin(self, vg: str) -> None:
        self._vgs.setdefault(vg, _Vg()).pending += 1

    def end(self, vg: str, committed: bool) -> None:
        state = self._vgs.setdefault(vg, _Vg())
        state.pending = max(0, state.pending - 1)
        if committed:
            state.done += 1

    def mark(self, vg: str) -> tuple[int, int]:
        """Our commits done and in flight on ``vg`` now: take it before the audit's read."""
        state = self._vgs.setdefault(vg, _Vg())
        return state.done, state.pending

    def audit(self, vg: str, seqno: int, lvs: Mapping[str, int],
              mark: tuple[int, int]) -> tuple[bool, ForeignWrite | None]:
        """Judge one look at the VG (read after ``mark``): (conclusive, the foreign write or
        None). Inconclusive when a command of ours was in flight at the mark or ran since:
        the read may or may not include its commit, so the next look judges."""
        state = self._vgs.setdefault(vg, _Vg())
        if state.pending or (state.done, state.pending) != mark:
            return False, None
        if state.base is None or seqno <= state.base + state.done:
            # the baseline, or settled: re-anchor (a command of ours counted as committed
            # that did not commit cannot drift the count)
            state.base, state.done, state.lvs = seqno, 0, dict(lvs)
            return True, None
        found = ForeignWrite(vg, state.base + state.done, seqno, *lv_diff(state.lvs, lvs))
        state.base, state.done, state.lvs = seqno, 0, dict(lvs)
        self.foreign_writes += 1
        self.last = found
        return True, found


class VgLooks(Protocol):
    """The reads the audit needs (``LvmReader``)."""

    async def vgs(self, *names: str) -> tuple[report.VG, ...]:
        """One ``vgs`` report (its ``vg_seqno``)."""
        ...

    async def vg_look(self, vg: str) -> tuple[int, dict[str, int]]:
        """The VG's ``vg_seqno`` and {lv: size}, from one report (the two agree)."""
        ...


class ForeignWriteAudit:
    """Per call: one ``vgs`` report (read-only) for every VG, and an ``lvs`` of a VG only
    when its ``vg_seqno`` moved; only while this host is the writer. The cost is the
    capacity watcher's own: one ``vgs`` per poll."""

    def __init__(self, ledger: WriteLedger, looks: VgLooks, vgs: Sequence[str]) -> None:
        self.ledger = ledger
        self.looks = looks
        self.vgs = tuple(vgs)
        self.failures = 0
        self.looked = 0   # judged or not: how many polls read the VGs
        self._seen: dict[str, int] = {}   # vg_seqno at the last lvs look, per VG
        self._epoch = -1

    async def look(self) -> list[ForeignWrite]:
        if not self.vgs or not self.ledger.active():
            return []
        if self._epoch != self.ledger.epoch:  # a new writer: every VG gets a baseline
            self._epoch, self._seen = self.ledger.epoch, {}
        try:
            seqnos = {vg.name: vg.seqno for vg in await self.looks.vgs(*self.vgs)}
        except (AutoextendError, OSError) as err:
            self.failures += 1
            log.warning("foreign-write audit could not read the VGs", error=str(err))
            return []
        self.looked += 1
        found: list[ForeignWrite] = []
        for vg, seqno in seqnos.items():
            if self._seen.get(vg) == seqno:
                continue
            write = await self._look(vg)
            if write is not None:
                found.append(write)
        return found

    async def _look(self, vg: str) -> ForeignWrite | None:
        mark = self.ledger.mark(vg)
        try:
            seqno, lvs = await self.looks.vg_look(vg)
        except (AutoextendError, OSError) as err:
            self.failures += 1
            log.warning("foreign-write audit could not read the VG", vg=vg, error=str(err))
            return None
        conclusive, write = self.ledger.audit(vg, seqno, lvs, mark)
        if conclusive:  # else: look again at the next poll
            self._seen[vg] = seqno
        if write is not None:
            log.error("foreign write to the VG metadata: only the SPM may change it",
                      vg=vg, expected_seqno=write.expected, seqno=write.observed,
                      appeared=list(write.appeared), vanished=list(write.vanished),
                      resized=[f"{lv}:{old}->{new}" for lv, old, new in write.resized],
                      detail=write.describe())
        return write
