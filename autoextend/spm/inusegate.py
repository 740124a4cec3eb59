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
* B opened v after the collection of the record read at ``t2`` (a window of at most one
  period plus the settle time): this look cannot see it. What closes this window is on
  the host: an open that goes through the host first must publish v *before* it lets the
  guest use it and must then check for a reduce in flight (a write-then-read on each side,
  Dekker style: either the SPM's second look sees B's record or B sees the SPM's intent).
  This needs an SPM intent record and the host's ``volume prepare`` hook, NOT BUILT yet
  (issue 27 report). The backstop for an open that bypasses the host (a guest started
  without ``volume prepare``) is the monitor's view audit: a view LARGER than the metadata
  size means the volume shrank under the guest: pause it, alert, never write past the new
  end (``monitor/viewcheck.py`` handles only view < metadata today; NOT BUILT either).

So, as built: a volume a guest or a process on any live host held at the first look, or
opened before that host's next collection, is never reduced; an open in the last window
is not refused by the SPM.

Dead and free hosts are skipped: a dead host is fenced (its watchdog fired before the lease
expired), a free id runs nothing. A FAILING host (renewals late, not yet dead) is not
skipped: it may still run guests, and its record is then likely stale, so reduces wait until
it is back or dead.

Reads: ``max_hosts`` is at most 2000 records of 4 KiB; only hosts not FREE or DEAD are read,
as contiguous runs, a few times per reduce (the settle polls every ``period_s / 2``). No
reads when no reduce is judged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from autoextend import logs
from autoextend.clock import Clock
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm import inuse
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout, contiguous_runs

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

    async def refusal(self, name: str, before: inuse.Look | None) -> str | None:
        """The second look: why ``name`` must not be reduced, or None."""
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
