"""Create and format a lease area file for the torture runs."""

from __future__ import annotations

from pathlib import Path

from autoextend.directio import open_storage
from autoextend.lease.area import format_area
from autoextend.lease.layout import LEASE_AREA_SIZE, LeaseLayout

FILE_SIZE = LEASE_AREA_SIZE + (4 << 20)


async def format_file(path: Path, max_hosts: int) -> None:
    # Written, not sparse: a direct write into a hole costs an allocation (and a journal
    # commit) on ext4, and the workers' check sector (torture_worker.CHECK_OFFSET) lives past
    # the lease area.
    with open(path, "wb") as f:
        f.write(bytes(FILE_SIZE))
    storage = await open_storage(str(path), io_timeout=5.0)
    try:
        await format_area(storage, LeaseLayout(0, storage.sector_size, max_hosts), 0.05)
    finally:
        await storage.close()
