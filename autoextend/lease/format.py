"""On-disk records of the lease area: named constants and pure pack/unpack functions.

Every record starts with a magic and a version and ends with a CRC-32 (``zlib.crc32``) of all
bytes before it, little-endian, at the start of its own sector; the rest of the sector is
zero. :func:`unpack_delta`, :func:`unpack_leader` and :func:`unpack_dblock` raise
:class:`RecordError` for anything that does not check out, so a torn or garbage sector is an
error and is never mistaken for a free record.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from autoextend.lease.errors import RecordError

VERSION = 1
DELTA_MAGIC = 0x44454C54  # "DELT"
LEADER_MAGIC = 0x4C454144  # "LEAD"
DBLOCK_MAGIC = 0x44424C4B  # "DBLK"
FLAG_RELEASED = 0x1  # leader: released by its owner; dblock: owner released this lver
NAME_BYTES = 64

# magic, version, sector_size, host_id, max_hosts, flags, generation, timestamp_us,
# io_timeout_ms, watchdog_ms, host_name
_DELTA = struct.Struct("<IHHHHIQQII64s")
# magic, version, sector_size, max_hosts, owner_id, flags, owner_generation, lver,
# timestamp_us, write_id, io_timeout_ms
_LEADER = struct.Struct("<IHHHHIQQQHI")
# magic, version, host_id, flags, lver, mbal, bal, inp_host, inp_generation
_DBLOCK = struct.Struct("<IHHIQQQHQ")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class DeltaRecord:
    """One host id slot. ``timestamp_us == 0`` means free; it changes on every renewal."""

    host_id: int
    generation: int
    timestamp_us: int
    host_name: str
    io_timeout_ms: int
    watchdog_ms: int
    sector_size: int
    max_hosts: int
    flags: int = 0

    @property
    def free(self) -> bool:
        return self.timestamp_us == 0


@dataclass(frozen=True)
class LeaderRecord:
    """The SPM lease's committed state: owner (0 = none) and version ``lver``."""

    owner_id: int
    owner_generation: int
    lver: int
    timestamp_us: int
    write_id: int
    io_timeout_ms: int
    sector_size: int
    max_hosts: int
    flags: int = 0

    @property
    def free(self) -> bool:
        return self.owner_id == 0 or bool(self.flags & FLAG_RELEASED)


@dataclass(frozen=True)
class Dblock:
    """A host's Disk Paxos block for the ballot of instance ``lver``."""

    host_id: int
    lver: int
    mbal: int
    bal: int
    inp_host: int
    inp_generation: int
    flags: int = 0


def _seal(body: bytes, sector_size: int) -> bytes:
    record = body + _CRC.pack(zlib.crc32(body))
    return record + bytes(sector_size - len(record))


def _open(kind: str, struct_: struct.Struct, magic: int, data: bytes, offset: int) -> tuple:  # type: ignore[type-arg]
    size = struct_.size
    if len(data) < size + _CRC.size:
        raise RecordError(kind, offset, f"short sector ({len(data)} bytes)")
    body = data[:size]
    (crc,) = _CRC.unpack_from(data, size)
    fields = struct_.unpack(body)
    if fields[0] != magic:
        raise RecordError(kind, offset, f"bad magic {fields[0]:#010x}")
    if fields[1] != VERSION:
        raise RecordError(kind, offset, f"unsupported version {fields[1]}")
    if crc != zlib.crc32(body):
        raise RecordError(kind, offset, "checksum mismatch")
    return fields


def pack_delta(rec: DeltaRecord, sector_size: int) -> bytes:
    name = rec.host_name.encode("utf-8")
    if len(name) > NAME_BYTES:
        raise ValueError(f"host name longer than {NAME_BYTES} bytes")
    body = _DELTA.pack(
        DELTA_MAGIC, VERSION, rec.sector_size, rec.host_id, rec.max_hosts, rec.flags,
        rec.generation, rec.timestamp_us, rec.io_timeout_ms, rec.watchdog_ms, name,
    )
    return _seal(body, sector_size)


def unpack_delta(data: bytes, offset: int = 0) -> DeltaRecord:
    f = _open("delta", _DELTA, DELTA_MAGIC, data, offset)
    try:
        name = f[10].rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("delta", offset, "host name is not UTF-8") from None
    return DeltaRecord(
        host_id=f[3], generation=f[6], timestamp_us=f[7], host_name=name,
        io_timeout_ms=f[8], watchdog_ms=f[9], sector_size=f[2], max_hosts=f[4], flags=f[5],
    )


def pack_leader(rec: LeaderRecord, sector_size: int) -> bytes:
    body = _LEADER.pack(
        LEADER_MAGIC, VERSION, rec.sector_size, rec.max_hosts, rec.owner_id, rec.flags,
        rec.owner_generation, rec.lver, rec.timestamp_us, rec.write_id, rec.io_timeout_ms,
    )
    return _seal(body, sector_size)


def unpack_leader(data: bytes, offset: int = 0) -> LeaderRecord:
    f = _open("leader", _LEADER, LEADER_MAGIC, data, offset)
    return LeaderRecord(
        owner_id=f[4], owner_generation=f[6], lver=f[7], timestamp_us=f[8], write_id=f[9],
        io_timeout_ms=f[10], sector_size=f[2], max_hosts=f[3], flags=f[5],
    )


def pack_dblock(rec: Dblock, sector_size: int) -> bytes:
    body = _DBLOCK.pack(
        DBLOCK_MAGIC, VERSION, rec.host_id, rec.flags, rec.lver, rec.mbal, rec.bal,
        rec.inp_host, rec.inp_generation,
    )
    return _seal(body, sector_size)


def unpack_dblock(data: bytes, offset: int = 0) -> Dblock:
    f = _open("dblock", _DBLOCK, DBLOCK_MAGIC, data, offset)
    return Dblock(
        host_id=f[2], flags=f[3], lver=f[4], mbal=f[5], bal=f[6], inp_host=f[7],
        inp_generation=f[8],
    )


def sectors(data: bytes, sector_size: int) -> list[bytes]:
    """Split an area read into its sectors."""
    return [data[i : i + sector_size] for i in range(0, len(data), sector_size)]
