"""The SPM's look at the hosts' in-use records before a reduce (issue 27, item 1).

A REDUCE is applied only if no host that is not known dead has the volume open, as its
in-use record says (``inuse.py``; published by every host every ``period_s``,
``inusepub.py``). The executor (``execute.py``) runs it in two looks around a wait:

1. **first look** (before the VG's lock is taken: the wait below must not hold up extends
   of the VG): read every record of a host the lease does not see FREE or DEAD;
2. **settle**: wait until every such host's ``seq`` has moved by at least 2 (at most
   ``3 x period_s + margin_s``; a host that did not publish by then is stale);
3. **second look**, with the VG's lock held, right before the reduce (``reducing.py``'s
   ``in_use`` check, after "already applied"): :func:`inuse.judge` on the second look
   against the first. Refused (VOLUME_BUSY, one line naming the host) when a host lists
   the volume, its record is unreadable, missing, of another generation than its lease, or
   did not move by 2.

A dry run (REDUCE_CHECK) makes only the second look, without the freshness rule.

**Why this closes the race with a host that opens the volume meanwhile** (host B, volume v).
Let ``t1`` be the end of the first look's read and ``t2`` the start of the second look's read;
the reduce is applied after ``t2``, while the VG's lock is held.

* B had v open at any moment from before ``t1`` up to the collection of a record read at
  ``t2``: the record read at ``t2`` has ``seq >= s + 2`` where ``s`` was read at ``t1``.
  Publish ``s + 2`` collected after publish ``s + 1`` was written, and ``s + 1`` could not
  have been written before ``t1`` (the first look would have read it), so it collected after
  ``t1``. A holder that opened v before that collection and still held it then is in that
  record: refused. One that closed v before that collection no longer holds it.
* B opened v after the collection of the record read at ``t2``: this look cannot see it.
  The **intent record** closes this window (``intent.py``; a write-then-read on each side,
  Dekker style). Before the first look the SPM writes an intent naming v (:meth:`InUseGate.guard`:
  W_s) and keeps it until the op is done; its second look (R_s) starts after W_s
  completed. A host lets a guest open v only through :func:`inusepub.InUsePublisher.claim`:
  it adds v to its record and writes it (W_h), then reads the intent record (R_h), and goes
  on only if no intent names v; it keeps v in every later record until the guest let go.
  Storage is linearizable per sector (one writer each, O_DIRECT), so either

  - R_h saw W_s: the host refuses the open (it may retry after the op: it then opens the
    volume at its new size, its view made after the claim); or
  - R_h did not see W_s: then W_h completed before W_s did, so before R_s started, and
    R_s reads W_h or a later record of the host, every one listing v: the SPM refuses.

  Never both proceed. A host that cannot write its record or read the intent record
  refuses the open (retry later); a corrupt intent record names every volume. An intent
  left by an SPM that died stays until the next SPM's mail server starts and writes the
  record empty (``clear_intents``): opens of that one volume wait until then (safe: the old
  SPM is fenced and reduces nothing).
* The backstop for an open that bypasses :meth:`claim` (a guest started without ``volume
  prepare``, a process outside autoextend) is the monitor's view check: a view LARGER
  than the metadata means the volume shrank under the guest: pause it, alert, never write
  past the new end (``monitor/viewcheck.py: judge_view``, ``ViewAction.SHRUNK``).

So: a volume a guest or a process on any live host held at the first look, opened before
that host's next collection, or claimed at any moment before the op is done, is never
shrunk.

**Entry point for every shrinking op** (REDUCE today, REMOVE next): :meth:`InUseGate.guard`
(``async with gate.guard(name, op, host, request_id) as first_look:``; around the op, the
VG's lock taken inside it), then :meth:`InUseGate.refusal` with that ``first_look`` as the
second look, with the VG's lock held, right before the lvm2 command.

Dead and free hosts are skipped: a dead host is fenced (its watchdog fired before the lease
expired), a free id runs nothing. A FAILING host (renewals late, not yet dead) is not
skipped: it may still run guests, and its record is then likely stale, so reduces wait until
it is back or dead.

Reads: ``max_hosts`` is at most 2000 records of 4 KiB; only hosts not FREE or DEAD are read,
as contiguous runs, a few times per reduce (the settle polls every ``period_s / 2``). No
reads when no reduce is judged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import anyio

from autoextend import logs
from autoextend.clock import Clock
from autoextend.errors import NotSpmError
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm import intent, inuse
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout, contiguous_runs
from autoextend.volumes import SpmAuthority

log = logs.get_logger("spm.server")

# The lease's view of every host it knows: {host id: (state name, delta lease generation)}.
HostStates = Callable[[], Mapping[int, tuple[str, int]]]

MAX_RUN = 64  # records per read (256 KiB)


class InUseGate:
    def __init__(self, storage: SectorStorage, layout: MailboxLayout, states: HostStates,
                 clock: Clock, *, period_s: float = inuse.PUBLISH_PERIOD_S,
                 margin_s: float = 2.0) -> None:
        self._storage = storage
        self._layout = layout
        self._states = states
        self._clock = clock
        self.period_s = period_s
        self.margin_s = margin_s
        self._intents: set[intent.Intent] = set()   # this term's, as last written
        self._written: set[intent.Intent] = set()   # on storage (the last write succeeded)
        self._intent_lock = anyio.Lock()
        # A failing intent write is logged once per outage, then counted (a term's retried
        # start-ups and every guard share this gate).
        self._repeats = logs.Repeats(log, clock.now)

    def end(self) -> None:
        """The term is over: count any write failure still repeating (one summary line)."""
        self._repeats.clear_all()

    def states(self) -> dict[int, tuple[str, int]]:
        """The lease's host states, limited to the layout's host ids."""
        return {h: s for h, s in self._states().items() if 1 <= h <= self._layout.max_hosts}

    async def look(self, states: Mapping[int, tuple[str, int]] | None = None) -> inuse.Look:
        """Every record of a host not FREE or DEAD: a record, None or why it is unreadable."""
        states = self.states() if states is None else states
        hosts = [h for h, (state, _) in states.items() if state not in inuse.HOST_GONE]
        size = inuse.RECORD_BYTES
        out: dict[int, inuse.InUseRecord | None | str] = {}
        for first, count in contiguous_runs(hosts, MAX_RUN):
            try:
                raw = await self._storage.read(self._layout.inuse_offset(first), count * size)
            except StorageError as exc:
                for h in range(first, first + count):
                    out[h] = f"read failed: {exc}"
                continue
            for i in range(count):
                try:
                    out[first + i] = inuse.decode(raw[i * size:(i + 1) * size], first + i)
                except CorruptSector as exc:
                    out[first + i] = exc.reason
        return out

    async def settle(self, before: inuse.Look) -> None:
        """Wait until every record of ``before`` moved by 2, or the deadline passed."""
        deadline = self._clock.now() + 3 * self.period_s + self.margin_s
        while True:
            after = await self.look()
            if all(_moved(before.get(h), rec) for h, rec in after.items()):
                return
            if self._clock.now() >= deadline:
                return
            await self._clock.sleep(self.period_s / 2)

    async def _write_intents(self) -> bool:
        """Write this SPM's intents whole; True when the write succeeded."""
        data = intent.encode(self._intents, self._storage.sector_size)
        try:
            await self._storage.write(self._layout.intent_offset, data)
        except StorageError as exc:
            self._repeats.warning("writing the intent record failed", error=str(exc))
            self._written = set()
            return False
        self._repeats.clear("writing the intent record failed")
        self._written = set(self._intents)
        return True

    async def clear_intents(self) -> None:
        """At the start of a term: write an empty intent record (a previous SPM's intents,
        or garbage in a never-written area, would hold up opens until the first reduce).
        A failure is logged; the first ``guard`` writes the record again."""
        async with self._intent_lock:
            self._intents.clear()
            await self._write_intents()

    @asynccontextmanager
    async def guard(self, name: str, op: int, host: int, request_id: int,
                    authority: SpmAuthority | None = None) -> AsyncIterator[inuse.Look]:
        """The gate around one shrinking op of ``name`` (the entry point of REDUCE and
        REMOVE): write the intent, take the first look, settle; yield the first look (pass
        it to :meth:`refusal`, the second look, made right before the lvm2 command); take
        the intent back when the op is done, whatever happened, unless ``authority`` says
        the term is over (a fenced SPM must not overwrite its successor's record: the
        stale intent stays until the next SPM's first write)."""
        mine = intent.intent(name, op, host, request_id)
        async with self._intent_lock:
            self._intents.add(mine)
            await self._write_intents()
        try:
            first = await self.look()
            await self.settle(first)
            yield first
        finally:
            with anyio.CancelScope(shield=True):
                async with self._intent_lock:
                    self._intents.discard(mine)
                    try:
                        if authority is not None:
                            authority.check()
                    except NotSpmError:
                        pass
                    else:
                        await self._write_intents()

    async def refusal(self, name: str, before: inuse.Look | None) -> str | None:
        """The second look: why ``name`` must not be reduced, or None. With ``before``
        (not a dry run), also refused when this op's intent is not on storage (its write
        failed): a host could not have seen it."""
        if before is not None and intent.names(self._written, name) is None:
            return "the SPM could not write its intent record; retry later"
        states = self.states()
        return inuse.judge(name, await self.look(states), states, before)


def _moved(old: inuse.InUseRecord | None | str, new: inuse.InUseRecord | None | str) -> bool:
    if not isinstance(old, inuse.InUseRecord) or not isinstance(new, inuse.InUseRecord):
        return True  # nothing to wait for: judge() refuses or passes it as it is
    return new.generation != old.generation or new.seq >= old.seq + 2


def lease_states(host_states: Callable[[], Mapping[int, object]]) -> HostStates:
    """Adapt ``LeaseEngine.host_states()`` (``HostStatus`` values) to :data:`HostStates`."""
    def states() -> dict[int, tuple[str, int]]:
        out: dict[int, tuple[str, int]] = {}
        for host, status in host_states().items():
            state = getattr(status, "state", None)
            out[host] = (str(getattr(state, "value", state)).lower(),
                         int(getattr(status, "generation", 0) or 0))
        return out
    return states
