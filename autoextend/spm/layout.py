"""Where everything of the mailbox lives on the metadata area (pure arithmetic, no I/O).

From ``base`` on, in this order::

    doorbell area     max_hosts x u16, rounded up to whole sectors (SPM reads it each poll)
    request boxes     max_hosts x mailbox_bytes  (host h writes only its own box)
    reply boxes       max_hosts x mailbox_bytes  (only the SPM writes them)

Host ids run 1..max_hosts; host ``h`` is index ``h - 1`` everywhere. A mailbox has
``SLOTS_PER_HOST`` slots spread over ``sectors_per_box`` sectors.

The doorbell words are the one place where hosts share a sector (see ``doorbell.py`` for why
that is safe: a doorbell is only a hint).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from autoextend.spm.errors import LayoutError
from autoextend.spm.wire import slots_per_sector

SLOTS_PER_HOST = 64  # requests in flight per host (vdsm: 63)
DOORBELL_WORD = struct.Struct("<H")
ALIGNMENT = 4096


@dataclass(frozen=True)
class MailboxLayout:
    base: int
    sector_size: int
    max_hosts: int

    def __post_init__(self) -> None:
        if self.sector_size not in (512, 4096):
            raise LayoutError(f"sector size must be 512 or 4096, got {self.sector_size}")
        if self.base < 0 or self.base % ALIGNMENT:
            raise LayoutError(f"offset {self.base} is not a multiple of {ALIGNMENT}")
        if not 1 <= self.max_hosts <= 2000:
            raise LayoutError(f"max_hosts must be 1..2000, got {self.max_hosts}")

    @property
    def slots_per_sector(self) -> int:
        return slots_per_sector(self.sector_size)

    @property
    def sectors_per_box(self) -> int:
        return -(-SLOTS_PER_HOST // self.slots_per_sector)

    @property
    def box_bytes(self) -> int:
        return self.sectors_per_box * self.sector_size

    @property
    def doorbell_bytes(self) -> int:
        raw = self.max_hosts * DOORBELL_WORD.size
        return -(-raw // self.sector_size) * self.sector_size

    @property
    def request_base(self) -> int:
        return self.base + self.doorbell_bytes

    @property
    def reply_base(self) -> int:
        return self.request_base + self.max_hosts * self.box_bytes

    @property
    def end(self) -> int:
        return self.reply_base + self.max_hosts * self.box_bytes

    @property
    def total_bytes(self) -> int:
        return self.end - self.base

    def check_host(self, host_id: int) -> None:
        if not 1 <= host_id <= self.max_hosts:
            raise LayoutError(f"host id {host_id} outside 1..{self.max_hosts}")

    def request_offset(self, host_id: int) -> int:
        self.check_host(host_id)
        return self.request_base + (host_id - 1) * self.box_bytes

    def reply_offset(self, host_id: int) -> int:
        self.check_host(host_id)
        return self.reply_base + (host_id - 1) * self.box_bytes

    def slot_sector(self, slot: int) -> int:
        """The sector (index within a box) that holds ``slot``."""
        if not 0 <= slot < SLOTS_PER_HOST:
            raise LayoutError(f"slot {slot} outside 0..{SLOTS_PER_HOST - 1}")
        return slot // self.slots_per_sector

    def sector_slots(self, sector: int) -> range:
        """The slots held by sector ``sector`` of a box."""
        first = sector * self.slots_per_sector
        return range(first, min(first + self.slots_per_sector, SLOTS_PER_HOST))

    @property
    def doorbell_sectors(self) -> int:
        return self.doorbell_bytes // self.sector_size

    def _doorbell_index(self, host_id: int) -> int:
        """Word index of ``host_id``: hosts are dealt round-robin over the doorbell sectors,
        so hosts with neighbouring ids (often busy at the same time) share fewer sectors."""
        self.check_host(host_id)
        sectors = self.doorbell_sectors
        per_sector = self.sector_size // DOORBELL_WORD.size
        return ((host_id - 1) % sectors) * per_sector + (host_id - 1) // sectors

    def doorbell_sector_offset(self, host_id: int) -> int:
        """Absolute offset of the doorbell sector holding ``host_id``'s word."""
        pos = self._doorbell_index(host_id) * DOORBELL_WORD.size
        return self.base + pos - pos % self.sector_size

    def doorbell_word_pos(self, host_id: int) -> int:
        """Byte position of ``host_id``'s word inside its doorbell sector."""
        return (self._doorbell_index(host_id) * DOORBELL_WORD.size) % self.sector_size

    def doorbell_words(self, area: bytes) -> list[int]:
        """Every host's doorbell word from the doorbell area (index 0 = host 1)."""
        return [
            DOORBELL_WORD.unpack_from(area, self._doorbell_index(h) * DOORBELL_WORD.size)[0]
            for h in range(1, self.max_hosts + 1)
        ]

    def check_fits(self, storage_size: int) -> None:
        if self.end > storage_size:
            raise LayoutError(
                f"the mailbox needs bytes {self.base}..{self.end} but the storage has "
                f"{storage_size} (lower max_hosts or grow the metadata area)"
            )


def changed_hosts(old: list[int], new: list[int]) -> list[int]:
    """Host ids whose doorbell word differs (any change counts: a word may also go back)."""
    return [i + 1 for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]


def read_word(sector: bytes, pos: int) -> int:
    value: int = DOORBELL_WORD.unpack_from(sector, pos)[0]
    return value


def with_word(sector: bytes, pos: int, value: int) -> bytes:
    """``sector`` with one doorbell word replaced (the other hosts' words kept as read)."""
    buf = bytearray(sector)
    DOORBELL_WORD.pack_into(buf, pos, value & 0xFFFF)
    return bytes(buf)


def next_ring(value: int) -> int:
    """The next doorbell value; never 0 so a zeroed area always differs from a rung bell."""
    nxt = (value + 1) & 0xFFFF
    return nxt or 1


def contiguous_runs(hosts: list[int], max_run: int) -> list[tuple[int, int]]:
    """Group sorted host ids into ``(first, count)`` runs of adjacent ids, at most ``max_run``
    long, so adjacent mailboxes are read with one I/O."""
    runs: list[tuple[int, int]] = []
    for host in sorted(set(hosts)):
        if runs and runs[-1][0] + runs[-1][1] == host and runs[-1][1] < max_run:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((host, 1))
    return runs
