"""Format a lease area and dump every record of it (used by ``autoextend lease init/dump``)."""

from __future__ import annotations

from typing import Any

from autoextend.lease.errors import NotFormatted, RecordError
from autoextend.lease.format import (
    FLAG_RELEASED,
    Dblock,
    DeltaRecord,
    LeaderRecord,
    pack_dblock,
    pack_delta,
    pack_leader,
    sectors,
    unpack_dblock,
    unpack_delta,
    unpack_leader,
)
from autoextend.lease.layout import LEASE_AREA_SIZE, LeaseLayout
from autoextend.sectors import SectorStorage


async def format_area(storage: SectorStorage, layout: LeaseLayout, io_timeout_s: float) -> None:
    """Write a free record in every slot: delta records, leader (lver 0), dblocks.

    The leader is written last, so a half-done format has no readable leader.
    """
    if layout.end > storage.size:
        raise NotFormatted(
            storage.path,
            f"storage has {storage.size} bytes, the lease area needs {layout.end} "
            f"(offset {layout.base} + {LEASE_AREA_SIZE})",
        )
    ss = layout.sector_size
    delta = b"".join(
        pack_delta(
            DeltaRecord(
                host_id=h, generation=0, timestamp_us=0, host_name="",
                io_timeout_ms=int(io_timeout_s * 1000), watchdog_ms=0, sector_size=ss,
                max_hosts=layout.max_hosts,
            ),
            ss,
        )
        for h in range(1, layout.max_hosts + 1)
    )
    await storage.write(layout.delta_start, delta)
    paxos = bytes(2 * ss) + b"".join(
        pack_dblock(Dblock(h, 0, 0, 0, 0, 0), ss) for h in range(1, layout.max_hosts + 1)
    )
    await storage.write(layout.paxos_start, paxos)
    leader = LeaderRecord(
        owner_id=0, owner_generation=0, lver=0, timestamp_us=0, write_id=0,
        io_timeout_ms=int(io_timeout_s * 1000), sector_size=ss, max_hosts=layout.max_hosts,
    )
    await storage.write(layout.leader_offset, pack_leader(leader, ss))


def _flags(value: int) -> list[str]:
    return ["released"] if value & FLAG_RELEASED else []


async def dump_area(storage: SectorStorage, layout: LeaseLayout) -> dict[str, Any]:
    """Every record as plain data; unreadable records appear with their error."""
    ss = layout.sector_size
    hosts: list[dict[str, Any]] = []
    delta = await storage.read(layout.delta_start, layout.delta_length)
    for index, raw in enumerate(sectors(delta, ss)):
        host = index + 1
        try:
            rec = unpack_delta(raw, layout.delta_offset(host), host)
        except RecordError as err:
            hosts.append({"host_id": host, "error": err.reason})
            continue
        hosts.append({
            "host_id": host, "state": "free" if rec.free else "held",
            "host_name": rec.host_name, "generation": rec.generation,
            "timestamp_us": rec.timestamp_us, "io_timeout_ms": rec.io_timeout_ms,
            "watchdog_ms": rec.watchdog_ms,
            "spm_priority": rec.spm_priority,  # None: not published (an older release)
        })
    paxos = await storage.read(layout.paxos_start, layout.paxos_length)
    parts = sectors(paxos, ss)
    leader: dict[str, Any]
    try:
        lead = unpack_leader(parts[0], layout.leader_offset, layout.max_hosts)
        leader = {
            "owner_id": lead.owner_id, "owner_generation": lead.owner_generation,
            "lver": lead.lver, "timestamp_us": lead.timestamp_us, "write_id": lead.write_id,
            "flags": _flags(lead.flags), "free": lead.free,
        }
    except RecordError as err:
        leader = {"error": err.reason}
    dblocks: list[dict[str, Any]] = []
    for index, raw in enumerate(parts[2:]):
        host = index + 1
        try:
            b = unpack_dblock(raw, layout.dblock_offset(host), host, layout.max_hosts)
        except RecordError as err:
            dblocks.append({"host_id": host, "error": err.reason})
            continue
        dblocks.append({
            "host_id": host, "lver": b.lver, "mbal": b.mbal, "bal": b.bal,
            "inp_host": b.inp_host, "inp_generation": b.inp_generation, "flags": _flags(b.flags),
        })
    return {
        "area": {
            "offset": layout.base, "sector_size": ss, "max_hosts": layout.max_hosts,
            "delta_offset": layout.delta_start, "paxos_offset": layout.paxos_start,
            "mailbox_offset": layout.end,
        },
        "hosts": hosts,
        "leader": leader,
        "dblocks": dblocks,
    }
