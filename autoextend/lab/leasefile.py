"""Create and format a lease area file (the lease torture tests and the lease benchmarks)."""

from __future__ import annotations

from pathlib import Path

import anyio

from autoextend.directio import open_storage
from autoextend.lease.area import format_area
from autoextend.lease.format import MAX_BALLOT, Dblock, DeltaRecord, pack_dblock, pack_delta
from autoextend.lease.layout import LEASE_AREA_SIZE, LeaseLayout

FILE_SIZE = LEASE_AREA_SIZE + (4 << 20)
U64 = (1 << 64) - 1


def hostile_records(layout: LeaseLayout, absent: list[int]) -> list[tuple[int, bytes]]:
    """Records for host ids that never run: every dblock unreadable one way or another (bad
    checksum, checksum-valid impossible values, an mbal nobody can exceed), and every second
    host id record checksum-valid but impossible (generation 2**64-1, a 49-day I/O timeout)."""
    ss = layout.sector_size
    out: list[tuple[int, bytes]] = []
    for i, host in enumerate(absent):
        kind = i % 3
        if kind == 0:
            raw = bytes([0xA5]) * ss                                     # garbage
        elif kind == 1:
            raw = pack_dblock(Dblock(host, U64, U64, 0, 0, 0), ss)       # lver = mbal = 2**64-1
        else:
            raw = pack_dblock(Dblock(host, 1, MAX_BALLOT, MAX_BALLOT, 1, 1), ss)  # jams
        out.append((layout.dblock_offset(host), raw))
        if i % 2:
            delta = DeltaRecord(host, U64, 12345, f"ghost{host}", 2**32 - 1, 0, ss,
                                layout.max_hosts)
            out.append((layout.delta_offset(host), pack_delta(delta, ss)))
    return out


async def format_file(path: Path, max_hosts: int, hostile: list[int] | None = None) -> None:
    """``hostile``: host ids (that never run) whose records are made unreadable."""
    # Written, not sparse: a direct write into a hole costs an allocation (and a journal
    # commit) on ext4, and the workers' check sector (torture_worker.CHECK_OFFSET) lives past
    # the lease area.
    await anyio.to_thread.run_sync(_write_zeros, path)
    storage = await open_storage(str(path), io_timeout=5.0)
    try:
        layout = LeaseLayout(0, storage.sector_size, max_hosts)
        await format_area(storage, layout, 0.05)
        for offset, raw in hostile_records(layout, hostile or []):
            await storage.write(offset, raw)
    finally:
        await storage.close()


def _write_zeros(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(bytes(FILE_SIZE))
