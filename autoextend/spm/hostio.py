"""The host mailbox's I/O on its own sectors: its request box and ring sector (only this host
writes them) and its reply sectors (only the SPM writes them).

The box write is durable before the ring write starts (the caller awaits one, then the
other): a box read the SPM makes after seeing the ring holds the request (``watch.py``).
While no reply comes it rings again after ``ring_retry_initial_s``, doubling up to
``ring_retry_max_s`` (a safety net only: rings are never lost).
"""

from __future__ import annotations

from autoextend import logs
from autoextend.clock import Clock
from autoextend.sectors import SectorStorage
from autoextend.spm.config import MailboxSettings
from autoextend.spm.errors import CorruptSector
from autoextend.spm.hostpolicy import HostMailboxCounters, next_retry_delay
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.slots import SlotTable
from autoextend.spm.wire import (
    Kind,
    Reply,
    Ring,
    decode_sector,
    encode_ring,
    encode_sector,
)


class HostSectors:
    """Writes one host's request box and ring sector, reads its reply sectors."""

    def __init__(
        self, storage: SectorStorage, layout: MailboxLayout, host_id: int,
        settings: MailboxSettings, clock: Clock, counters: HostMailboxCounters,
        log: logs.Logger,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._storage = storage
        self._layout = layout
        self._host_id = host_id
        self._counters = counters
        self._log = log
        self.ring_count = 0
        self._box_seq = 0
        self._rung_at = -1e18
        self._retry_delay = 0.0
        self._logged: dict[int, str] = {}  # reply sector -> corruption reason logged

    async def write_box(self, slots: SlotTable, sectors: list[int], generation: int) -> None:
        """Write the box sectors from the first to the last of ``sectors`` (one I/O)."""
        layout = self._layout
        first, last = min(sectors), max(sectors)
        data = b"".join(
            encode_sector(Kind.REQUEST, layout.sector_size, i, self._host_id, generation,
                          slots.image(i))
            for i in range(first, last + 1)
        )
        await self._storage.write(
            layout.request_offset(self._host_id) + (first - 1) * layout.sector_size, data
        )
        self._box_seq = (self._box_seq + 1) & 0xFFFFFFFF

    async def ring(self, slots: SlotTable, generation: int) -> None:
        """Write the ring sector (the head slots, the box sequence) with the next count."""
        layout = self._layout
        count = self.ring_count + 1
        head = tuple(slots.image(0))
        await self._storage.write(
            layout.ring_offset(self._host_id),
            encode_ring(layout.sector_size,
                        Ring(self._host_id, generation, count, self._box_seq, head)),
        )
        self.ring_count = count
        self._rung_at = self._clock.now()
        self._counters.rings += 1

    async def ring_again(self, slots: SlotTable, generation: int, pending: int) -> None:
        """Ring again, with backoff, while no reply comes (``pending`` requests wait)."""
        initial = self._settings.ring_retry_initial_s
        delay = self._retry_delay or initial
        if self._clock.now() - self._rung_at >= delay:
            self._log.info("no reply yet, ringing again", pending=pending)
            await self.ring(slots, generation)
            self._retry_delay = next_retry_delay(delay, initial, self._settings.ring_retry_max_s)

    def answered(self) -> None:
        """A reply came: the next re-ring waits ``ring_retry_initial_s`` again."""
        self._retry_delay = 0.0

    async def read_replies(self, sectors: set[int]) -> dict[int, Reply]:
        """The replies in the reply sectors ``sectors`` (one read for the range), by slot.
        A corrupt sector is skipped (counted every time, logged once); a malformed slot is
        no reply."""
        layout = self._layout
        ss = layout.sector_size
        first, last = min(sectors), max(sectors)
        data = await self._storage.read(
            layout.reply_offset(self._host_id) + first * ss, (last - first + 1) * ss
        )
        found: dict[int, Reply] = {}
        for index in sorted(sectors):
            raw = data[(index - first) * ss : (index - first + 1) * ss]
            slots = layout.reply_sector_slots(index)
            try:
                sector = decode_sector(raw, Kind.REPLY, index, self._host_id, len(slots))
            except CorruptSector as err:
                self._counters.corrupt_sectors += 1
                if self._logged.get(index) != err.reason:  # logged once, counted every time
                    self._logged[index] = err.reason
                    self._log.warning("corrupt reply sector skipped", error=str(err))
                continue
            self._logged.pop(index, None)
            found.update((slot, item) for slot, item in zip(slots, sector.slots, strict=True)
                         if isinstance(item, Reply))
        return found
