"""Shared helpers for lease tests: settings with a tiny T, a formatted in-memory area."""

from __future__ import annotations

from typing import Any

from autoextend.lease.area import format_area
from autoextend.lease.config import LeaseSettings
from autoextend.lease.layout import LEASE_AREA_SIZE, LeaseLayout
from autoextend.sectorfakes import MemoryStorage

T = 0.02
W = 0.05
# For tests whose subject is not timing: a lease that a loaded machine (a CPU hog beside
# two xdist workers) cannot let lapse by stalling the loop for a few hundred ms.
STEADY = {"io_timeout_s": 0.25, "watchdog_fire_timeout_s": 0.5}
MAX_HOSTS = 8


def settings(host_id: int, **extra: Any) -> LeaseSettings:
    values: dict[str, Any] = {
        "host_id": host_id, "host_name": f"host{host_id}", "io_timeout_s": T,
        "watchdog_fire_timeout_s": W, "max_hosts": MAX_HOSTS,
    }
    values.update(extra)
    return LeaseSettings(**values)


async def memory_area(sector_size: int = 512, max_hosts: int = MAX_HOSTS) -> MemoryStorage:
    storage = MemoryStorage(LEASE_AREA_SIZE + (1 << 20), sector_size)
    await format_area(storage, LeaseLayout(0, sector_size, max_hosts), T)
    return storage
