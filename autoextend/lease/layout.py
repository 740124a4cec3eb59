"""Where the lease records live in the metadata area (pure geometry, no I/O).

All offsets are relative to the area start (``[lease] offset``, a multiple of 1 MiB)::

    +0 MiB  delta lease area   2 MiB   host id records, host N in sector N-1
    +2 MiB  paxos lease area   2 MiB   sector 0 leader, sector 1 reserved (request),
                                       sector 2+N-1 the dblock of host N
    +4 MiB  MAILBOX_OFFSET             the SPM storage mailbox (see metadata_area.py)

2 MiB per area holds 2000 hosts at 512 B sectors and 500 at 4 KiB sectors, so the same
layout (and the same MAILBOX_OFFSET) serves both sector sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.metadata_area import (
    AREA_ALIGN,
    LEASE_AREA_SIZE,
    MAILBOX_OFFSET,
    MIB,
    mailbox_offset,
)

__all__ = [
    "AREA_ALIGN",
    "LEASE_AREA_SIZE",
    "MAILBOX_OFFSET",
    "MIB",
    "LeaseLayout",
    "mailbox_offset",
    "max_hosts_limit",
]

DELTA_AREA_OFFSET = 0
DELTA_AREA_SIZE = 2 * MIB
PAXOS_AREA_OFFSET = 2 * MIB
PAXOS_AREA_SIZE = 2 * MIB
PAXOS_LEADER_SECTOR = 0
PAXOS_REQUEST_SECTOR = 1
PAXOS_FIRST_DBLOCK_SECTOR = 2
MAX_HOSTS_CAP = 2000


def max_hosts_limit(sector_size: int) -> int:
    """Most hosts one area holds: 2000 at 512 B sectors, 500 at 4 KiB sectors."""
    fit = min(DELTA_AREA_SIZE // sector_size, PAXOS_AREA_SIZE // sector_size - 2)
    return min(MAX_HOSTS_CAP, fit - fit % 100 if fit > 100 else fit)


@dataclass(frozen=True)
class LeaseLayout:
    """Absolute offsets of every record for one area on one storage."""

    base: int
    sector_size: int
    max_hosts: int

    def __post_init__(self) -> None:
        if self.base % AREA_ALIGN:
            raise ValueError(f"area offset {self.base} is not a multiple of 1 MiB")
        if self.sector_size not in (512, 4096):
            raise ValueError(f"unsupported sector size {self.sector_size}")
        if not 1 <= self.max_hosts <= max_hosts_limit(self.sector_size):
            raise ValueError(
                f"max_hosts {self.max_hosts} not in 1..{max_hosts_limit(self.sector_size)} "
                f"for {self.sector_size}-byte sectors"
            )

    def check_host(self, host_id: int) -> None:
        if not 1 <= host_id <= self.max_hosts:
            raise ValueError(f"host id {host_id} not in 1..{self.max_hosts}")

    @property
    def delta_start(self) -> int:
        return self.base + DELTA_AREA_OFFSET

    @property
    def delta_length(self) -> int:
        """Bytes read by one renewal: every host's record."""
        return self.max_hosts * self.sector_size

    def delta_offset(self, host_id: int) -> int:
        self.check_host(host_id)
        return self.delta_start + (host_id - 1) * self.sector_size

    @property
    def paxos_start(self) -> int:
        return self.base + PAXOS_AREA_OFFSET

    @property
    def paxos_length(self) -> int:
        """Bytes read by one paxos step: leader, request and every dblock."""
        return (self.max_hosts + PAXOS_FIRST_DBLOCK_SECTOR) * self.sector_size

    @property
    def leader_offset(self) -> int:
        return self.paxos_start + PAXOS_LEADER_SECTOR * self.sector_size

    @property
    def request_offset(self) -> int:
        return self.paxos_start + PAXOS_REQUEST_SECTOR * self.sector_size

    def dblock_offset(self, host_id: int) -> int:
        self.check_host(host_id)
        return self.paxos_start + (PAXOS_FIRST_DBLOCK_SECTOR + host_id - 1) * self.sector_size

    @property
    def end(self) -> int:
        return self.base + LEASE_AREA_SIZE
