"""The host side of the in-use records: publish this host's open pool volumes every period.

:class:`InUsePublisher` runs inside the host's membership (``cluster.py``, next to the host
mailbox): every ``period_s`` it asks its source for the volumes this host has open (the
monitor's VMs' drives plus the holders scan, ``capacity/reduce.py: in_use_names``), builds its
record (``inuse.py``: one more ``seq`` every time, the host's delta lease generation) and
writes it to its own record, which no one else writes. It writes even when nothing changed:
a moving ``seq`` is how the SPM knows the record is fresh.

At start it reads its own record and continues from its ``seq`` (the SPM then never sees
``seq`` go back within a generation). A failed write or a failing source is logged once (then
counted) and retried at the next period; the record on disk then goes stale, and the SPM
refuses reduces while it stays stale (``inuse.judge``): an outage here costs reduces, never
safety. Nothing here stops the host.

**Claims** (the host's half of the intent protocol, ``inusegate.py``): before a guest (or
anything else) opens a pool volume through this host, :meth:`InUsePublisher.claim` adds it to
the record, writes the record, then reads the SPM's intent record; the open may go on only
when no shrinking op names the volume. The claim stays in every record until
:meth:`InUsePublisher.release`, until the source lists the volume itself (the monitor saw
the guest: it lists it from then on, as long as it is open), or for ``CLAIM_TTL_S`` if the
source never does (a start that failed). The view must be made after the claim returned.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

import anyio
from anyio.abc import TaskStatus

from autoextend import logs
from autoextend.clock import Clock
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm import handoff, intent, inuse
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout

log = logs.get_logger("spm.inuse")

CLAIM_TTL_S = 600.0  # a claimed volume the source never listed (a guest start that failed)

# This host's open pool volumes, as "vg/lv" names (may raise: logged, the record not written).
InUseSource = Callable[[], Awaitable[Collection[str]]]
# This host's view of the pool's PVs, {pv uuid: device bytes} (``inuse.py``, device views;
# may raise: logged, the record goes out without views, so a GROW-PV waits for this host).
DeviceSource = Callable[[], Awaitable[Mapping[str, int]]]
# This host's pause claims and tombstones (``handoff.py``; may raise: logged, none written).
ClaimSource = Callable[[], Iterable[handoff.PauseClaim]]


class InUsePublisher:
    def __init__(self, storage: SectorStorage, layout: MailboxLayout, host_id: int,
                 source: InUseSource, generation: Callable[[], int], clock: Clock, *,
                 period_s: float = inuse.PUBLISH_PERIOD_S,
                 wall_us: Callable[[], int] = lambda: int(time.time() * 1e6),
                 pause_claims: ClaimSource | None = None,
                 devices: DeviceSource | None = None) -> None:
        layout.check_host(host_id)
        self._storage = storage
        self._layout = layout
        self.host_id = host_id
        self._source = source
        self._generation = generation
        self._clock = clock
        self.period_s = period_s
        self._wall_us = wall_us
        self._pause_claims = pause_claims
        self._devices = devices
        self.seq = 0
        self.published = 0
        self.failures = 0
        self.last: inuse.InUseRecord | None = None
        self._repeats = logs.Repeats(log)
        self.claims: dict[str, float] = {}  # name -> when the claim lapses (clock)
        self.started = False  # start() read this host's seq from disk
        self._lock = anyio.Lock()  # one publish at a time: seq only goes up on disk

    async def start(self) -> None:
        """Continue from the ``seq`` on disk (an unreadable record: from a fresh high one)."""
        offset = self._layout.inuse_offset(self.host_id)
        raw = await self._storage.read(offset, inuse.RECORD_BYTES)
        try:
            old = inuse.decode(raw, self.host_id)
        except CorruptSector:
            old = None
            self.seq = int(self._wall_us())  # above any seq a previous run could have reached
        if old is not None:
            self.seq = old.seq
        self.started = True

    async def publish_once(self) -> inuse.InUseRecord | None:
        """Collect and write one record; None when the source or the write failed."""
        async with self._lock:
            return await self._publish()

    async def claim(self, name: str) -> str | None:
        """Before ``vg/lv`` ``name`` is opened here: why it must not be opened now, or None
        (then it stays listed until :meth:`release`). Write-then-read: the record listing
        it is written before the SPM's intent record is read (``inusegate.py``)."""
        if not self.started:
            return f"{name}: this host's in-use record is not started yet; retry later"
        self.claims[name] = self._clock.now() + CLAIM_TTL_S
        if await self.publish_once() is None:
            self.claims.pop(name, None)
            return f"{name}: this host could not publish its volumes in use; retry later"
        try:
            raw = await self._storage.read(self._layout.intent_offset, intent.RECORD_BYTES)
            named = intent.names(intent.decode(raw), name)
        except (StorageError, CorruptSector) as exc:
            self.claims.pop(name, None)
            return f"{name}: the SPM's intent record is unreadable ({exc}); retry later"
        if named is not None:
            self.claims.pop(name, None)
            log.warning("open refused: a shrinking op is in flight", volume=name,
                        host_id=self.host_id, request_id=named.request_id)
            return (f"{name} is being shrunk by the SPM ({named.text()}); retry when it is"
                    " done")
        return None

    def release(self, name: str) -> None:
        """``name`` is no longer open here through a claim (dropped at the next publish)."""
        self.claims.pop(name, None)

    async def _publish(self) -> inuse.InUseRecord | None:
        try:
            listed = set(await self._source())
        except Exception as exc:  # a failing source must not stop publishing
            self.failures += 1
            self._repeats.warning("collecting the volumes in use failed",
                                  error=str(exc) or type(exc).__name__, host_id=self.host_id)
            return None
        now = self._clock.now()
        for name, lapses in list(self.claims.items()):
            if name in listed or now >= lapses:  # the source has it now, or it never came
                del self.claims[name]
        names = sorted(listed | set(self.claims))
        pauses = self._collect_pauses()
        views = await self._views()
        self.seq += 1
        record = inuse.make_record(self.host_id, self._generation(), self.seq,
                                   self._wall_us(), names, pauses, views)
        try:
            await self._storage.write(self._layout.inuse_offset(self.host_id),
                                      inuse.encode(record, self._storage.sector_size))
        except StorageError as exc:
            self.failures += 1
            self._repeats.warning("writing the in-use record failed", error=str(exc),
                                  host_id=self.host_id)
            return None
        self._repeats.clear("writing the in-use record failed")
        self._repeats.clear("collecting the volumes in use failed")
        if self.last is None or self.last.hashes != record.hashes:
            log.info("volumes in use published", host_id=self.host_id, volumes=len(names),
                     overflow=record.overflow, seq=record.seq)
        self.last = record
        self.published += 1
        return record

    def _collect_pauses(self) -> list[handoff.PauseClaim]:
        if self._pause_claims is None:
            return []
        try:
            pauses = list(self._pause_claims())
        except Exception as exc:  # noqa: BLE001 - a failing source must not stop publishing
            self._repeats.warning("collecting the pause claims failed",
                                  error=str(exc) or type(exc).__name__, host_id=self.host_id)
            return []
        if len(set(pauses)) > handoff.MAX_CLAIMS:
            self._repeats.warning("more pause claims than a record holds; the rest are not "
                                  "published (their guests stay paused where they migrate)",
                                  claims=len(set(pauses)), host_id=self.host_id)
        return pauses

    async def _views(self) -> Mapping[str, int]:
        """This host's device views; none when it has no source or the source failed."""
        if self._devices is None:
            return {}
        what = "collecting this host's view of the PVs failed"
        try:
            views = dict(await self._devices())
            inuse.make_record(self.host_id, 0, 1, 0, (), (), views)  # fits, sizes in range
        except Exception as exc:  # a failing source must not stop publishing
            self._repeats.warning(what, error=str(exc) or type(exc).__name__,
                                  host_id=self.host_id)
            return {}
        self._repeats.clear(what)
        return views

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish now, then every ``period_s`` (``started()`` after the first attempt)."""
        try:
            await self.start()
        except StorageError as exc:
            self.seq = int(self._wall_us())
            self.started = True
            log.warning("reading this host's in-use record failed; starting from a high seq",
                        error=str(exc), host_id=self.host_id)
        await self.publish_once()
        task_status.started()
        while True:
            await self._clock.sleep(self.period_s)
            await self.publish_once()
