"""Where everything of the mailbox lives on the metadata area (pure arithmetic, no I/O).

From ``base`` on, in this order::

    ring sectors      max_hosts x 1 sector       (host h writes only sector h - 1)
    request boxes     max_hosts x mailbox_bytes  (host h writes only its own box)
    reply boxes       max_hosts x mailbox_bytes  (only the SPM writes them)

Host ids run 1..max_hosts; host ``h`` is index ``h - 1`` everywhere. A mailbox has
``SLOTS_PER_HOST`` slots spread over ``sectors_per_box`` sectors.

No sector is written by two parties: every host writes only its ring sector and its request
box, the SPM only the reply boxes. The ring sectors are contiguous so the SPM can read all of
them in one sequential read (see ``watch.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.spm.errors import LayoutError
from autoextend.spm.wire import slots_per_sector

SLOTS_PER_HOST = 64  # requests in flight per host (vdsm: 63)
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
    def ring_bytes(self) -> int:
        """The ring area: one sector per host."""
        return self.max_hosts * self.sector_size

    @property
    def request_base(self) -> int:
        return self.base + self.ring_bytes

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

    def ring_offset(self, host_id: int) -> int:
        """Absolute offset of ``host_id``'s ring sector."""
        self.check_host(host_id)
        return self.base + (host_id - 1) * self.sector_size

    def check_fits(self, storage_size: int) -> None:
        if self.end > storage_size:
            raise LayoutError(
                f"the mailbox needs bytes {self.base}..{self.end} but the storage has "
                f"{storage_size} (lower max_hosts or grow the metadata area)"
            )


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
