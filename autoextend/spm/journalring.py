"""The journal ring on the metadata area: read it (any host), append to it (the SPM only).

Record format and ring arithmetic: ``journal.py``. Where: ``metadata_area.py``.

Reading (:func:`read_ring`): the whole ring in 1 MiB reads, every slot decoded; a torn or
garbage slot is counted (``Scan.skipped``), never trusted. No lock, no SPM needed: a record
being written while it is read shows up as torn in that read, and whole in the next one.

Appending (:class:`JournalWriter`, one per SPM term). The invariant: **only the SPM of a
valid term writes the ring, and each write continues after the last valid record**.

* The writer's first append (or :meth:`JournalWriter.prepare`, started at the term's start)
  reads the whole ring and takes the highest valid ``seq`` as the head: a failover, or a
  crash in the middle of a write, costs at most the records that write was adding (a torn
  record is skipped; the next record goes after the last valid one).
* ``authority.check()`` (the SPM term, ``lease/term.py``) runs right before every write.
* Group commit: appends that arrive while a write is in flight go out together in the next
  write. A batch of ``k`` records touches at most ``k`` sectors (``ceil((k - 1) / per) + 1``
  with ``per`` records a sector), so the journal adds at most one sector write per change.
* A change recorded late: an SPM killed between its change and its record leaves the
  change unrecorded; the next SPM serves the request again and finds the volume already
  that large. When the journal's last size for the volume is smaller than what it finds,
  :meth:`JournalWriter.note_found` records the change then, flagged FOUND (the last size
  it had is the size before). A volume with no record in the ring cannot be judged so.
* A sector is written whole. The writer keeps the image of the head's sector and rewrites
  the records already in it with the same bytes; a sector the head enters is written from
  zeros (on a wrapped ring it drops at most ``per - 1`` of the oldest records a little
  early, which the 102,400 slots allow for: at least 100,000 stay).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from autoextend import logs
from autoextend.metadata_area import JOURNAL_RECORDS
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm import journal
from autoextend.spm.journal import Entry, Op, Record, Scan
from autoextend.volumes import SpmAuthority, VolumeRef

log = logs.get_logger("spm.journal")

READ_CHUNK = 1 << 20
LOST = "journal record lost: the write failed"


@dataclass(frozen=True)
class Ring:
    """Where the ring is: ``base`` (sector aligned) and its number of record slots."""

    base: int
    records: int = JOURNAL_RECORDS

    @property
    def size(self) -> int:
        return self.records * journal.RECORD_SIZE

    def offset(self, slot: int) -> int:
        return self.base + slot * journal.RECORD_SIZE


async def read_ring(storage: SectorStorage, ring: Ring) -> Scan:
    """Every valid record of the ring, in ``seq`` order, and the count of torn or garbage
    slots. Raises StorageError when a read fails."""
    chunk = max(READ_CHUNK - READ_CHUNK % storage.sector_size, storage.sector_size)
    scans: list[Scan] = []
    at = 0
    while at < ring.size:
        length = min(chunk, ring.size - at)
        data = await storage.read(ring.base + at, length)
        scans.append(journal.scan_slots(data, at // journal.RECORD_SIZE, ring.records))
        at += length
    return journal.merge(scans)


async def clear_ring(storage: SectorStorage, ring: Ring) -> None:
    """Zero the whole ring (``lease init``: a new pool starts with an empty journal)."""
    chunk = max(READ_CHUNK - READ_CHUNK % storage.sector_size, storage.sector_size)
    at = 0
    while at < ring.size:
        length = min(chunk, ring.size - at)
        await storage.write(ring.base + at, bytes(length))
        at += length


@dataclass
class JournalCounters:
    appended: int = 0  # records written
    writes: int = 0  # write calls (one per run of adjacent sectors)
    sectors: int = 0  # sectors written
    failures: int = 0  # records lost to a failed write (the change itself stands)
    skipped_at_start: int = 0  # torn or garbage slots found when the head was recovered
    head_at_start: int = 0  # the last valid seq found then (0: empty ring)


@dataclass
class _Pending:
    entry: Entry
    finished: bool = False
    seq: int | None = None
    error: StorageError | None = None


class JournalWriter:
    """Appends records for one SPM term (``lver``) of host ``spm_host``."""

    def __init__(self, storage: SectorStorage, ring: Ring, authority: SpmAuthority, *,
                 lver: int, spm_host: int, wall: Callable[[], float] = time.time,
                 counters: JournalCounters | None = None) -> None:
        """``counters``: shared by the writers of one process, across terms (else new)."""
        if storage.sector_size % journal.RECORD_SIZE or ring.base % storage.sector_size:
            raise ValueError("the journal must start on a sector boundary")
        self._storage = storage
        self._ring = ring
        self._authority = authority
        self.lver = lver
        self.spm_host = spm_host
        self._wall = wall
        self._per = journal.per_sector(storage.sector_size)
        self._lock = anyio.Lock()
        self._pending: list[_Pending] = []
        self.head: int | None = None  # the last seq written (None: not recovered yet)
        self._image: tuple[int, bytearray] | None = None  # (sector index, its bytes)
        self._last: dict[str, int] = {}  # volume -> its size in its newest record
        self.counters = counters if counters is not None else JournalCounters()
        self._repeats = logs.Repeats(log)

    async def prepare(self) -> None:
        """Find the head now (else the first append does). Raises StorageError."""
        async with self._lock:
            await self._recover()

    async def note(self, op: Op, volume: VolumeRef, old_size: int | None, new_size: int, *,
                   host: int = 0, request_id: int = 0, generation: int = 0,
                   found: bool = False) -> int | None:
        """Append the record of one change; its ``seq``, or None when the write failed
        (logged, counted: the change stands, only its record is lost). Raises NotSpmError
        when the term is no longer valid."""
        entry = Entry(op, volume.vg, volume.lv, old_size or 0, new_size, self.lver,
                      self.spm_host, host, request_id, generation,
                      int(self._wall() * 1_000_000), found)
        try:
            seq = await self.append(entry)
        except StorageError as err:
            self.counters.failures += 1
            self._repeats.warning(LOST, volume=str(volume), host_id=host,
                                  request_id=request_id, error=str(err))
            return None
        self._repeats.clear(LOST)
        return seq

    async def note_found(self, volume: VolumeRef, size: int, *, host: int = 0,
                         request_id: int = 0, generation: int = 0) -> int | None:
        """An extend found ``volume`` at ``size`` already: record the change late (FOUND)
        when the journal's last size for it is smaller; else nothing (None). The caller
        holds the volume's VG lock (no other change of it comes in between)."""
        try:
            async with self._lock:
                await self._recover()
        except StorageError:
            return None  # the next change tries again
        last = self._last.get(str(volume))
        if last is None or last >= size:
            return None
        log.warning("journal: a change was not recorded; recording it late", volume=str(volume),
                    size=size, journaled=last, host_id=host, request_id=request_id)
        return await self.note(Op.EXTEND, volume, last, size, host=host,
                               request_id=request_id, generation=generation, found=True)

    async def note_created_late(self, volume: VolumeRef, size: int, *, host: int = 0,
                                request_id: int = 0, generation: int = 0) -> int | None:
        """A create served again found its LV made by its own request: record the create
        late (FOUND) when the journal has no record of the volume since it last went (an
        SPM that died between its ``lvcreate`` and its record); else nothing (None)."""
        try:
            async with self._lock:
                await self._recover()
        except StorageError:
            return None
        if self._last.get(str(volume)):
            return None
        return await self.note(Op.CREATE, volume, 0, size, host=host, request_id=request_id,
                               generation=generation, found=True)

    async def append(self, entry: Entry) -> int:
        """Write ``entry`` (with whatever else is pending) and return its ``seq``. Raises
        StorageError (the record is not written) and NotSpmError."""
        item = _Pending(entry)
        self._pending.append(item)
        async with self._lock:
            if not item.finished:
                batch, self._pending = self._pending, []
                try:
                    await self._recover()
                    await self._write(batch)
                except StorageError as err:
                    for other in batch:
                        other.error = err
                finally:
                    for other in batch:
                        other.finished = True
        if item.error is not None:
            raise item.error
        if item.seq is None:  # the holder of its batch left on another error
            self._authority.check()  # NotSpmError: the term ended
            raise StorageError(self._storage.path, "write", self._ring.base, 0,
                               "the journal write of this record was cancelled")
        return item.seq

    async def _recover(self) -> None:
        if self.head is not None:
            return
        scan = await read_ring(self._storage, self._ring)
        head = scan.head
        self.counters.skipped_at_start = scan.skipped
        self.counters.head_at_start = head
        self.head = head
        self._last = {r.entry.volume: r.entry.new_size for r in scan.records}  # seq order
        if head:
            index = journal.slot_of(head, self._ring.records) // self._per
            image = bytearray(self._storage.sector_size)
            first = index * self._per
            for rec in scan.records:
                slot = journal.slot_of(rec.seq, self._ring.records)
                if first <= slot < first + self._per:
                    journal.place(image, slot - first, rec)
            self._image = (index, image)
        log.info("journal head found", seq=head, skipped=scan.skipped, lver=self.lver)

    async def _write(self, batch: list[_Pending]) -> None:
        """Give the batch its seqs, write the sectors they fall in, then mark them done."""
        assert self.head is not None
        sectors: dict[int, bytearray] = {}
        seq = self.head
        for item in batch:
            seq += 1
            slot = journal.slot_of(seq, self._ring.records)
            index = slot // self._per
            if index not in sectors:
                if self._image is not None and self._image[0] == index:
                    sectors[index] = bytearray(self._image[1])
                else:
                    sectors[index] = bytearray(self._storage.sector_size)
            journal.place(sectors[index], slot % self._per, Record(seq, item.entry))
        for first, images in _runs(sectors):
            self._authority.check()  # only the SPM of this very term writes the ring
            await self._storage.write(self._ring.base + first * self._storage.sector_size,
                                      b"".join(images))
            self.counters.writes += 1
            self.counters.sectors += len(images)
        last = journal.slot_of(seq, self._ring.records) // self._per
        self._image = (last, sectors[last])
        for i, item in enumerate(batch, start=self.head + 1):
            item.seq = i
            self._last[item.entry.volume] = item.entry.new_size
        self.head = seq
        self.counters.appended += len(batch)


def _runs(sectors: dict[int, bytearray]) -> list[tuple[int, list[bytearray]]]:
    """Adjacent sector indexes as ``(first, images)`` runs (one write each)."""
    runs: list[tuple[int, list[bytearray]]] = []
    for index in sorted(sectors):
        if runs and runs[-1][0] + len(runs[-1][1]) == index:
            runs[-1][1].append(sectors[index])
        else:
            runs.append((index, [sectors[index]]))
    return runs
