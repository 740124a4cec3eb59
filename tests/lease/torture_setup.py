"""Create and format a lease area file for the torture runs."""

from __future__ import annotations

from pathlib import Path

from autoextend.directio import open_storage
from autoextend.lease.area import format_area
from autoextend.lease.layout import LEASE_AREA_SIZE, LeaseLayout


async def format_file(path: Path, max_hosts: int) -> None:
    with open(path, "wb") as f:
        f.truncate(LEASE_AREA_SIZE + (4 << 20))
    storage = await open_storage(str(path), io_timeout=5.0)
    try:
        await format_area(storage, LeaseLayout(0, storage.sector_size, max_hosts), 0.05)
    finally:
        await storage.close()
