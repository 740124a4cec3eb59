"""The pause claims on the metadata area: what the in-use publisher writes of them, and the
destination's reads (``handoff.py`` has the entries and the rule; ``monitor/handoff.py`` and
``monitor/pauseclaims.py`` the monitor's two halves).

:class:`StorageHandoff` is this host's :class:`~autoextend.monitor.arrival.PauseHandoff`. It
is made before the host joins the pool and bound to the storage and the in-use publisher
once it has (:meth:`bind`); until then every read raises :class:`HandoffUnavailable` (the
destination looks again). Cost: a destination reads the whole in-use region
(``max_hosts x 4 KiB``) once per look of a VM that arrived paused, at most once a second
for at most a minute; nothing is read otherwise. The claims ride in the in-use record this
host writes every 2 s anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.monitor.arrival import Baseline, ClaimedPause
from autoextend.monitor.pauseclaims import OwnPause
from autoextend.sectors import SectorStorage
from autoextend.spm import handoff, inuse
from autoextend.spm.errors import CorruptSector
from autoextend.spm.handoff import Kind, PauseClaim, Seen
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.layout import MailboxLayout
from autoextend.volumes import VolumeRef


class HandoffUnavailable(AutoextendError):
    """The pause claims cannot be read or written now (``reason``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"pause claims unavailable: {reason}")


def vm_hash(name: str) -> int:
    return inuse.volume_hash(name)


def vol_hash(volume: VolumeRef) -> int:
    return inuse.volume_hash(str(volume))


class StorageHandoff:
    def __init__(self, host_id: int, own: Callable[[], Iterable[OwnPause]], clock: Clock,
                 ) -> None:
        self.host_id = host_id
        self._own = own
        self._clock = clock
        self._tombstones: dict[PauseClaim, float] = {}  # -> when it lapses (clock)
        self._storage: SectorStorage | None = None
        self._layout: MailboxLayout | None = None
        self._publisher: InUsePublisher | None = None

    def bind(self, storage: SectorStorage, layout: MailboxLayout,
             publisher: InUsePublisher) -> None:
        self._storage, self._layout, self._publisher = storage, layout, publisher

    def claims(self) -> list[PauseClaim]:
        """What this host's in-use record carries now: its claims and its tombstones."""
        now = self._clock.now()
        for t, lapses in list(self._tombstones.items()):
            if now >= lapses:
                del self._tombstones[t]
        own = [PauseClaim(Kind.CLAIM, vm_hash(p.vm), vol_hash(p.volume), self.host_id,
                          p.pause_id) for p in self._own()]
        return [*own, *self._tombstones]

    async def baseline(self) -> Baseline:
        return {h: (s.generation, s.seq) for h, s in (await self._read()).items()}

    async def claimed(self, vm: str, volumes: Collection[VolumeRef],
                      baseline: Baseline) -> ClaimedPause | None:
        look = await self._read()
        base = {h: Seen(g, s) for h, (g, s) in baseline.items()}
        by_hash = {vol_hash(v): v for v in volumes}
        found = handoff.adoptable(vm_hash(vm), by_hash.keys(), self.host_id, base, look)
        if not found:
            return None
        first = min(c.identity for c in found)  # one pause (a VM has one at a time)
        return ClaimedPause(first[0], first[1], frozenset(
            by_hash[c.volume] for c in found if c.identity == first))

    async def adopt(self, vm: str, pause: ClaimedPause) -> None:
        if self._publisher is None:
            raise HandoffUnavailable("this host has not joined the pool yet")
        lapses = self._clock.now() + handoff.TOMBSTONE_S
        mine = {PauseClaim(Kind.ADOPTED, vm_hash(vm), vol_hash(v), pause.origin,
                           pause.pause_id) for v in pause.volumes}
        for t in mine:
            self._tombstones[t] = lapses
        record = await self._publisher.publish_once()
        if record is None or not mine <= set(record.claims):
            raise HandoffUnavailable("this host's in-use record with the tombstone was not "
                                     "written")

    async def _read(self) -> dict[int, Seen]:
        """Every host's record that was ever published. Raises HandoffUnavailable on an I/O
        error or an unreadable record (a tombstone in it could not be seen)."""
        storage, layout = self._storage, self._layout
        if storage is None or layout is None:
            raise HandoffUnavailable("this host has not joined the pool yet")
        size = layout.max_hosts * inuse.RECORD_BYTES
        try:
            raw = await storage.read(layout.inuse_base, size)
        except AutoextendError as err:
            raise HandoffUnavailable(str(err)) from err
        out: dict[int, Seen] = {}
        for host in range(1, layout.max_hosts + 1):
            start = (host - 1) * inuse.RECORD_BYTES
            try:
                rec = inuse.decode(raw[start:start + inuse.RECORD_BYTES], host)
            except CorruptSector as err:
                raise HandoffUnavailable(f"host {host}'s in-use record: {err}") from err
            if rec is not None:
                out[host] = Seen(rec.generation, rec.seq, rec.claims)
        return out
