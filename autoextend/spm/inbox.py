"""What the SPM knows of every host's requests: its ring sector and its request box.

A host's request slots live in two places: the first ``head_slots`` in its ring sector
(request sector 0, read by the ring watch or here), the rest in its request box (sectors
1..n, read here). The ring sector carries ``box_seq``, which the host bumps with every box
write, so the box is read only when ``(generation, box_seq)`` differs from the ring sector
read before the last box read (a restarted host counts ``box_seq`` from the start again,
its generation is new): a host with at most ``head_slots`` requests in flight costs the
SPM no box read at all.

Why a box that is not re-read is never missing a request: the host writes its box before
the ring sector that carries the new ``box_seq``. A ring sector with the ``box_seq`` of the
box the SPM read last therefore comes from before any later box write, and the ring sector
write that follows that box write changes the ring (a new count), which the SPM sees.

Decoded box sectors are cached by their bytes: an unchanged sector is not decoded twice.
Corrupt sectors are skipped and counted every time they are read, logged once (again when
the reason changes, or after the sector was good in between), never acted on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from autoextend import logs
from autoextend.errors import AutoextendError
from autoextend.sectors import SectorStorage
from autoextend.spm.counters import ServerCounters
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout, contiguous_runs
from autoextend.spm.wire import (
    Kind,
    MalformedSlot,
    Reply,
    Request,
    Ring,
    decode_ring,
    decode_sector,
)

log = logs.get_logger("spm.inbox")

MAX_READ_BYTES = 1 << 20  # adjacent hosts are read together, up to this much per I/O


@dataclass(frozen=True)
class _Part:
    """One decoded request sector (ring or box): its generation and its slots."""

    generation: int
    slots: range
    items: tuple[Request | MalformedSlot | None, ...]


class Inbox:
    """The latest ring and box sectors of every host, and the requests they hold."""

    def __init__(
        self, storage: SectorStorage, layout: MailboxLayout, counters: ServerCounters,
        repeats: logs.Repeats | None = None,
    ) -> None:
        self._storage = storage
        self._layout = layout
        self._counters = counters
        self._heads: dict[int, Ring] = {}  # valid ring sectors only
        # (generation, box_seq) of the ring sector read before the last box read
        self._box_seen: dict[int, tuple[int, int] | None] = {}
        self._decoded: dict[tuple[int, int], tuple[bytes, _Part]] = {}
        self._logged: dict[tuple[int, int], str] = {}  # (host, sector) -> reason logged
        # read errors retried every poll: once, then a count (the server's, when it has one)
        self._repeats = repeats or logs.Repeats(log)

    def _corrupt(self, host_id: int, index: int, err: CorruptSector, what: str) -> None:
        self._counters.corrupt_sectors += 1
        if self._logged.get((host_id, index)) != err.reason:
            self._logged[(host_id, index)] = err.reason
            log.warning(what, host_id=host_id, error=str(err))

    def _good(self, host_id: int, index: int) -> None:
        self._logged.pop((host_id, index), None)

    def take_ring(self, host_id: int, ring: Ring | None) -> None:
        """A ring sector read by the ring watch (None: it failed its checks)."""
        if ring is None:
            self._heads.pop(host_id, None)
        else:
            self._heads[host_id] = ring

    def box_stale(self, host_id: int) -> bool:
        """Whether the box may hold requests the last box read did not see."""
        head = self._heads.get(host_id)
        seen = self._box_seen.get(host_id)
        return head is None or seen is None or (head.generation, head.box_seq) != seen

    async def read_rings(self, hosts: list[int]) -> set[int]:
        """Read and decode the ring sectors of ``hosts``; the hosts whose read failed."""
        layout = self._layout
        ss = layout.sector_size
        failed: set[int] = set()
        for first, count in contiguous_runs(hosts, max(1, MAX_READ_BYTES // ss)):
            try:
                data = await self._storage.read(layout.ring_offset(first), count * ss)
            except AutoextendError as err:
                self._counters.io_errors += 1
                failed.update(range(first, first + count))
                self._repeats.warning("ring sector read failed", error=str(err))
                continue
            self._repeats.clear("ring sector read failed")
            for n in range(count):
                host_id = first + n
                try:
                    ring = decode_ring(data[n * ss : (n + 1) * ss], host_id)
                except CorruptSector as err:
                    self._corrupt(host_id, 0, err, "corrupt ring sector skipped")
                    self.take_ring(host_id, None)
                    continue
                self._good(host_id, 0)
                self.take_ring(host_id, ring)
        return failed

    async def read_boxes(self, hosts: list[int]) -> set[int]:
        """Read and decode the request boxes of ``hosts``; the hosts whose read failed."""
        layout = self._layout
        size = layout.request_box_bytes
        failed: set[int] = set()
        for first, count in contiguous_runs(hosts, max(1, MAX_READ_BYTES // size)):
            try:
                data = await self._storage.read(layout.request_offset(first), count * size)
            except AutoextendError as err:
                self._counters.io_errors += 1
                failed.update(range(first, first + count))
                self._repeats.warning("request box read failed", error=str(err))
                continue
            self._repeats.clear("request box read failed")
            for n in range(count):
                host_id = first + n
                head = self._heads.get(host_id)
                self._box_seen[host_id] = (
                    None if head is None else (head.generation, head.box_seq)
                )
                self._counters.boxes_read += 1
                self._take_box(host_id, data[n * size : (n + 1) * size])
        return failed

    def _take_box(self, host_id: int, box: bytes) -> None:
        layout = self._layout
        ss = layout.sector_size
        for n in range(layout.request_sectors - 1):
            index = n + 1
            raw = box[n * ss : (n + 1) * ss]
            cached = self._decoded.get((host_id, index))
            if cached is not None and cached[0] == raw:
                continue  # unchanged since the last read: already checked and decoded
            slots = layout.request_sector_slots(index)
            try:
                sector = decode_sector(raw, Kind.REQUEST, index, host_id, len(slots))
            except CorruptSector as err:
                self._decoded.pop((host_id, index), None)
                self._corrupt(host_id, index, err, "corrupt request sector skipped")
                continue
            self._good(host_id, index)
            items = tuple(None if isinstance(item, Reply) else item for item in sector.slots)
            self._decoded[(host_id, index)] = (raw, _Part(sector.generation, slots, items))

    def requests(self, host_id: int) -> Iterator[tuple[int, int, Request | MalformedSlot]]:
        """``(slot, generation, request)`` of every request of the host's newest generation
        (slots of sectors from an older generation are counted as stale and ignored)."""
        layout = self._layout
        parts: list[_Part] = []
        head = self._heads.get(host_id)
        if head is not None:
            parts.append(_Part(head.generation, layout.request_sector_slots(0), head.slots))
        for index in range(1, layout.request_sectors):
            cached = self._decoded.get((host_id, index))
            if cached is not None:
                parts.append(cached[1])
        if not parts:
            return
        newest = max(part.generation for part in parts)
        for part in parts:
            if part.generation != newest:
                if any(item is not None for item in part.items):
                    self._counters.stale_sectors += 1
                continue
            for slot, item in zip(part.slots, part.items, strict=True):
                if item is not None:
                    yield slot, part.generation, item
