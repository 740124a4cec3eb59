"""Where everything of the mailbox lives on the metadata area (pure arithmetic, no I/O).

From ``base`` on, in this order::

    ring sectors      max_hosts x 1 sector              (host h writes only sector h - 1)
    request boxes     max_hosts x request_box_bytes     (host h writes only its own box)
    reply boxes       max_hosts x reply_box_bytes       (only the SPM writes them)
    in-use records    max_hosts x 4 KiB                 (host h writes only record h - 1;
                                                         ``inuse.py``, issue 27)
    summary records   max_hosts x 1 sector              (host h writes only sector h - 1;
                                                         ``summary.py``, issue 33)

Host ids run 1..max_hosts; host ``h`` is index ``h - 1`` everywhere. A host's
``SLOTS_PER_HOST`` request slots are spread over its ring sector (request sector 0, the
first ``head_slots``) and its request box (sectors 1..n); its reply slots over the sectors
of its reply box.

No sector is written by two parties: every host writes only its ring sector and its request
box, the SPM only the reply boxes. The ring sectors are contiguous so the SPM can read all of
them in one sequential read (see ``watch.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.spm.errors import LayoutError
from autoextend.spm.intent import RECORD_BYTES as INTENT_RECORD_BYTES
from autoextend.spm.inuse import RECORD_BYTES as INUSE_RECORD_BYTES
from autoextend.spm.wire import head_slots, slots_per_sector

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
        """Slots in a box sector (request sectors 1..n and every reply sector)."""
        return slots_per_sector(self.sector_size)

    @property
    def head_slots(self) -> int:
        """Request slots 0..head_slots-1 live in the host's ring sector."""
        return head_slots(self.sector_size)

    # Requests: sector 0 is the ring sector (in the ring area), sectors 1..n the request box.

    @property
    def request_sectors(self) -> int:
        """Request sectors per host, the ring sector included."""
        return 1 + -(-(SLOTS_PER_HOST - self.head_slots) // self.slots_per_sector)

    @property
    def request_box_bytes(self) -> int:
        """A host's request sectors 1..n (its request box)."""
        return (self.request_sectors - 1) * self.sector_size

    def request_slot_sector(self, slot: int) -> int:
        """The request sector (0 = ring sector) that holds ``slot``."""
        _check_slot(slot)
        if slot < self.head_slots:
            return 0
        return 1 + (slot - self.head_slots) // self.slots_per_sector

    def request_sector_slots(self, sector: int) -> range:
        """The slots held by request sector ``sector`` (0 = ring sector)."""
        if sector == 0:
            return range(self.head_slots)
        first = self.head_slots + (sector - 1) * self.slots_per_sector
        return range(first, min(first + self.slots_per_sector, SLOTS_PER_HOST))

    @property
    def box_bytes(self) -> int:
        """Same as :attr:`request_box_bytes` (the name callers of the first layout used)."""
        return self.request_box_bytes

    # Replies: sectors 0..n of the reply box, every one written by the SPM only.

    @property
    def reply_sectors(self) -> int:
        return -(-SLOTS_PER_HOST // self.slots_per_sector)

    @property
    def reply_box_bytes(self) -> int:
        return self.reply_sectors * self.sector_size

    def reply_slot_sector(self, slot: int) -> int:
        """The reply sector that holds ``slot``."""
        _check_slot(slot)
        return slot // self.slots_per_sector

    def reply_sector_slots(self, sector: int) -> range:
        """The slots held by reply sector ``sector``."""
        first = sector * self.slots_per_sector
        return range(first, min(first + self.slots_per_sector, SLOTS_PER_HOST))

    # Offsets.

    @property
    def ring_bytes(self) -> int:
        """The ring area: one sector per host."""
        return self.max_hosts * self.sector_size

    @property
    def request_base(self) -> int:
        return self.base + self.ring_bytes

    @property
    def reply_base(self) -> int:
        return self.request_base + self.max_hosts * self.request_box_bytes

    @property
    def inuse_base(self) -> int:
        """The in-use records (one per host, ``inuse.py``), after the reply boxes."""
        return self.reply_base + self.max_hosts * self.reply_box_bytes

    @property
    def inuse_record_bytes(self) -> int:
        return INUSE_RECORD_BYTES

    def inuse_offset(self, host_id: int) -> int:
        """Absolute offset of ``host_id``'s in-use record."""
        self.check_host(host_id)
        return self.inuse_base + (host_id - 1) * INUSE_RECORD_BYTES

    @property
    def summary_base(self) -> int:
        """The summary records (one sector per host, ``summary.py``), after the in-use
        records."""
        return self.inuse_base + self.max_hosts * INUSE_RECORD_BYTES

    def summary_offset(self, host_id: int) -> int:
        """Absolute offset of ``host_id``'s summary record (one sector)."""
        self.check_host(host_id)
        return self.summary_base + (host_id - 1) * self.sector_size

    @property
    def intent_offset(self) -> int:
        """The SPM's intent record (``intent.py``, written by the SPM only), after the
        summary records."""
        return self.summary_base + self.max_hosts * self.sector_size

    @property
    def end(self) -> int:
        return self.intent_offset + INTENT_RECORD_BYTES

    def regions(self) -> list[tuple[str, int, int]]:
        """Every writer's region, ``(who, start, end)`` (tests check none overlap)."""
        out: list[tuple[str, int, int]] = []
        for h in range(1, self.max_hosts + 1):
            ring = self.ring_offset(h)
            out.append((f"ring {h}", ring, ring + self.sector_size))
            box = self.request_offset(h)
            out.append((f"requests {h}", box, box + self.request_box_bytes))
            reply = self.reply_offset(h)
            out.append((f"replies {h} (SPM)", reply, reply + self.reply_box_bytes))
            rec = self.inuse_offset(h)
            out.append((f"in-use {h}", rec, rec + INUSE_RECORD_BYTES))
            summary = self.summary_offset(h)
            out.append((f"summary {h}", summary, summary + self.sector_size))
        out.append(("intents (SPM)", self.intent_offset,
                    self.intent_offset + INTENT_RECORD_BYTES))
        return out

    @property
    def total_bytes(self) -> int:
        return self.end - self.base

    def check_host(self, host_id: int) -> None:
        if not 1 <= host_id <= self.max_hosts:
            raise LayoutError(f"host id {host_id} outside 1..{self.max_hosts}")

    def ring_offset(self, host_id: int) -> int:
        """Absolute offset of ``host_id``'s ring sector (its request sector 0)."""
        self.check_host(host_id)
        return self.base + (host_id - 1) * self.sector_size

    def request_offset(self, host_id: int) -> int:
        """Absolute offset of ``host_id``'s request box (its request sector 1)."""
        self.check_host(host_id)
        return self.request_base + (host_id - 1) * self.request_box_bytes

    def reply_offset(self, host_id: int) -> int:
        self.check_host(host_id)
        return self.reply_base + (host_id - 1) * self.reply_box_bytes

    def check_fits(self, storage_size: int) -> None:
        if self.end > storage_size:
            raise LayoutError(
                f"the mailbox needs bytes {self.base}..{self.end} but the storage has "
                f"{storage_size} (lower max_hosts or grow the metadata area)"
            )


def _check_slot(slot: int) -> None:
    if not 0 <= slot < SLOTS_PER_HOST:
        raise LayoutError(f"slot {slot} outside 0..{SLOTS_PER_HOST - 1}")


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
