"""Format and dump the sanlock engine's leases (``autoextend lease init/dump``).

Formatting goes through libsanlock's direct calls (no daemon needed). The dump reads the
records itself, with O_DIRECT, so it works without a daemon too: sanlock's leader record
(``leader.h``: magic, version, flags, sector_size, num_hosts, max_hosts, owner_id,
owner_generation, lver, space_name[48], resource_name[48], timestamp, unused, checksum,
unused, io_timeout, write_id, write_generation, write_timestamp; little-endian) is the same
for a delta lease (host N in sector N-1 of the lockspace; ``resource_name`` holds the host's
name, timestamp 0 = free) and for the resource's leader (sector 0 of the resource). Only the
magic is checked (sanlock's checksum is CRC-32C, which the standard library lacks).
"""

from __future__ import annotations

import struct
from typing import Any

import anyio

from autoextend.directio import open_storage
from autoextend.lease import sanlock_lib as sl
from autoextend.lease.config import LeaseSettings
from autoextend.lease.sanlock_engine import RESOURCE_NAME, sanlock_location
from autoextend.sectors import SectorStorage

DELTA_MAGIC = 0x12212010
PAXOS_MAGIC = 0x06152010
_LEADER = struct.Struct("<IIIIQQQQQ48s48sQQIHHQQQ")
AREA = 1 << 20


def parse_leader(raw: bytes) -> dict[str, Any]:
    (magic, version, flags, sector_size, num_hosts, max_hosts, owner_id, owner_generation,
     lver, space, name, timestamp, _, checksum, _, io_timeout, write_id, write_generation,
     write_timestamp) = _LEADER.unpack_from(raw)
    return {
        "magic": magic, "version": version, "flags": flags, "sector_size": sector_size,
        "num_hosts": num_hosts, "max_hosts": max_hosts, "owner_id": owner_id,
        "owner_generation": owner_generation, "lver": lver,
        "space_name": space.rstrip(b"\0").decode(errors="replace"),
        "resource_name": name.rstrip(b"\0").decode(errors="replace"),
        "timestamp": timestamp, "io_timeout": io_timeout, "write_id": write_id,
        "write_generation": write_generation, "write_timestamp": write_timestamp,
    }


def format_sanlock(settings: LeaseSettings, sector_size: int) -> tuple[str, int, int]:
    """Write the lockspace and the SPM resource (blocking: run in a thread)."""
    path, ls_offset, res_offset = sanlock_location(settings)
    ls = sl.lockspace(settings.sanlock_lockspace, 0, path, ls_offset, sector_size)
    sl.direct_write_lockspace(ls, int(settings.io_timeout_s))
    sl.direct_write_resource(sl.resource(settings.sanlock_lockspace, RESOURCE_NAME, path,
                                         res_offset, sector_size))
    return path, ls_offset, res_offset


async def dump_sanlock(settings: LeaseSettings, sector_size: int) -> dict[str, Any]:
    path, ls_offset, res_offset = sanlock_location(settings)
    storage: SectorStorage = await open_storage(path, sector_size, settings.io_timeout_s)
    try:
        ss = storage.sector_size
        lockspace = await storage.read(ls_offset, AREA)
        leader_raw = await storage.read(res_offset, ss)
    finally:
        with anyio.CancelScope(shield=True):
            await storage.close()
    hosts: list[dict[str, Any]] = []
    for index in range(2000 if ss == 512 else 250):  # a 1 MiB lockspace's host slots
        raw = lockspace[index * ss:(index + 1) * ss]
        rec = parse_leader(raw)
        host = index + 1
        if rec["magic"] != DELTA_MAGIC:
            if index == 0 or any(raw):
                hosts.append({"host_id": host, "error": f"bad magic {rec['magic']:#010x}"})
            continue
        hosts.append({
            "host_id": host, "state": "free" if rec["timestamp"] == 0 else "held",
            "host_name": rec["resource_name"], "generation": rec["owner_generation"],
            "timestamp": rec["timestamp"], "io_timeout": rec["io_timeout"],
            "lockspace": rec["space_name"],
        })
    lead = parse_leader(leader_raw)
    leader: dict[str, Any]
    if lead["magic"] != PAXOS_MAGIC:
        leader = {"error": f"bad magic {lead['magic']:#010x}"}
    else:
        leader = {
            "owner_id": lead["owner_id"], "owner_generation": lead["owner_generation"],
            "lver": lead["lver"], "timestamp": lead["timestamp"],
            "write_id": lead["write_id"], "free": lead["timestamp"] == 0,
            "lockspace": lead["space_name"], "resource": lead["resource_name"],
        }
    return {
        "engine": "sanlock",
        "area": {"path": path, "lockspace_offset": ls_offset, "resource_offset": res_offset,
                 "sector_size": ss, "lockspace": settings.sanlock_lockspace},
        "hosts": hosts,
        "leader": leader,
    }
