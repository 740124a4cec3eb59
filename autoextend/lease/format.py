"""On-disk records of the lease area: named constants and pure pack/unpack functions.

Every record starts with a magic and a version and ends with a CRC-32 (``zlib.crc32``) of all
bytes before it, little-endian, at the start of its own sector; the rest of the sector is
zero. :func:`unpack_delta`, :func:`unpack_leader` and :func:`unpack_dblock` raise
:class:`RecordError` for anything that does not check out, so a torn or garbage sector is an
error and is never mistaken for a free record.

A record whose checksum is right is still range-checked field by field (:func:`check_delta`,
:func:`check_leader`, :func:`check_dblock`): a value the code could not use (a generation or
lver so large that ``+1`` no longer fits its field, a host id outside 1..2000, an unknown
flag, an I/O timeout of 49 days) makes the record exactly as unreadable as a bad checksum.
Every limit leaves headroom for the arithmetic done on the value (see README, "Bad records").

The delta record's **extension** (since the SPM priority): bytes placed *after* the record's
CRC, in the zero rest of its sector, which a release without it never reads (``_open``
decodes the fixed record and its CRC only, and ignores the rest of the sector). So a host
that publishes it stays readable, byte for byte the same record, to every older host (a
rolling upgrade mixes both), and an older host's record simply has no extension (the
default priority). Layout, right after the record's CRC, little-endian:

    magic "DEXT" (u32), length (u16, bytes of fields that follow, >= 2),
    spm_priority (u16: 0..100, 0xFFFF = never), [fields a later release appends],
    CRC-32 (u32) of the record's fields (without their CRC) followed by the extension's
    fields, which binds the extension to its record.

A later release may append fields (a larger length); this one reads the first and checks
the CRC over all of them. An extension that does not check out (bad magic, length, CRC, or a
priority out of range) is *absent*, never an unreadable record: the host id record around
it is as readable as an older release finds it. The version and flags of the record itself
stay 1 and 0: an older release refuses any other (and would see the host as unreadable).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from autoextend.lease.errors import RecordError
from autoextend.lease.priority import Priority, from_wire, to_wire

VERSION = 1
DELTA_MAGIC = 0x44454C54  # "DELT"
LEADER_MAGIC = 0x4C454144  # "LEAD"
DBLOCK_MAGIC = 0x44424C4B  # "DBLK"
FLAG_RELEASED = 0x1  # leader: released by its owner; dblock: owner released this lver
NAME_BYTES = 64

# Range limits of decoded fields (a value past one makes the record unreadable). Every limit
# leaves room for the arithmetic on it: generation + 1, lver + 1 and the next ballot
# (mbal // max_hosts + 1) * max_hosts + host_id all stay far below 2**64.
MAX_GENERATION = 1 << 62   # delta generation, leader owner_generation, dblock inp_generation
MAX_LVER = 1 << 62         # leader lver, dblock lver
MAX_BALLOT = 1 << 62       # dblock mbal and bal
MAX_HOST_ID = 2000         # layout.MAX_HOSTS_CAP: host ids and max_hosts fields
MAX_IO_TIMEOUT_MS = 600_000        # [lease] io_timeout_s <= 600
MAX_WATCHDOG_MS = 3_600_000        # [lease] watchdog_fire_timeout_s <= 3600
SECTOR_SIZES = (512, 4096)

# magic, version, sector_size, host_id, max_hosts, flags, generation, timestamp_us,
# io_timeout_ms, watchdog_ms, host_name
_DELTA = struct.Struct("<IHHHHIQQII64s")
# magic, version, sector_size, max_hosts, owner_id, flags, owner_generation, lver,
# timestamp_us, write_id, io_timeout_ms
_LEADER = struct.Struct("<IHHHHIQQQHI")
# magic, version, host_id, flags, lver, mbal, bal, inp_host, inp_generation
_DBLOCK = struct.Struct("<IHHIQQQHQ")
_CRC = struct.Struct("<I")
DELTA_EXT_MAGIC = 0x54584544  # "DEXT" (little-endian)
# magic, length (bytes of fields after it), spm_priority
_DELTA_EXT = struct.Struct("<IHH")
DELTA_EXT_OFFSET = _DELTA.size + _CRC.size


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
    # In the record's extension (None: none written, an older release or unreadable).
    spm_priority: Priority | None = None

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
    sealed = _seal(body, sector_size)
    if rec.spm_priority is None:
        return sealed
    ext = _DELTA_EXT.pack(DELTA_EXT_MAGIC, 2, to_wire(rec.spm_priority))
    record = sealed[:DELTA_EXT_OFFSET] + ext + _CRC.pack(_ext_crc(sealed, ext))
    return record + bytes(sector_size - len(record))


def _ext_crc(sector: bytes, ext: bytes) -> int:
    """CRC-32 of the record's fields (not their CRC: a message followed by its own CRC-32
    has a constant CRC, which would not bind the extension to its record) and then of the
    extension's fields."""
    return zlib.crc32(ext, zlib.crc32(sector[: _DELTA.size]))


def delta_extension(data: bytes) -> Priority | None:
    """The SPM priority in a delta sector's extension, or None when there is none that
    checks out (see the module doc). Pure; never raises on any bytes."""
    end = DELTA_EXT_OFFSET + _DELTA_EXT.size
    if len(data) < end + _CRC.size:
        return None
    magic, length, wire = _DELTA_EXT.unpack_from(data, DELTA_EXT_OFFSET)
    if magic != DELTA_EXT_MAGIC or length < 2:
        return None
    crc_at = DELTA_EXT_OFFSET + 6 + length
    if crc_at + _CRC.size > len(data):
        return None
    (crc,) = _CRC.unpack_from(data, crc_at)
    if crc != _ext_crc(data, data[DELTA_EXT_OFFSET:crc_at]):
        return None
    return from_wire(wire)


def unpack_delta(data: bytes, offset: int = 0, host_id: int | None = None) -> DeltaRecord:
    """Decode and range-check a delta record; ``host_id``: the slot it was read from."""
    f = _open("delta", _DELTA, DELTA_MAGIC, data, offset)
    raw_name = f[10].rstrip(b"\0")
    if b"\0" in raw_name:
        raise RecordError("delta", offset, "host name holds a NUL byte")
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("delta", offset, "host name is not UTF-8") from None
    rec = DeltaRecord(
        host_id=f[3], generation=f[6], timestamp_us=f[7], host_name=name,
        io_timeout_ms=f[8], watchdog_ms=f[9], sector_size=f[2], max_hosts=f[4], flags=f[5],
        spm_priority=delta_extension(data),
    )
    problem = check_delta(rec, host_id)
    if problem:
        raise RecordError("delta", offset, problem)
    return rec


def pack_leader(rec: LeaderRecord, sector_size: int) -> bytes:
    body = _LEADER.pack(
        LEADER_MAGIC, VERSION, rec.sector_size, rec.max_hosts, rec.owner_id, rec.flags,
        rec.owner_generation, rec.lver, rec.timestamp_us, rec.write_id, rec.io_timeout_ms,
    )
    return _seal(body, sector_size)


def unpack_leader(data: bytes, offset: int = 0, max_hosts: int | None = None) -> LeaderRecord:
    """Decode and range-check the leader; ``max_hosts``: our layout's, owner ids past it are
    impossible."""
    f = _open("leader", _LEADER, LEADER_MAGIC, data, offset)
    rec = LeaderRecord(
        owner_id=f[4], owner_generation=f[6], lver=f[7], timestamp_us=f[8], write_id=f[9],
        io_timeout_ms=f[10], sector_size=f[2], max_hosts=f[3], flags=f[5],
    )
    problem = check_leader(rec, max_hosts)
    if problem:
        raise RecordError("leader", offset, problem)
    return rec


def pack_dblock(rec: Dblock, sector_size: int) -> bytes:
    body = _DBLOCK.pack(
        DBLOCK_MAGIC, VERSION, rec.host_id, rec.flags, rec.lver, rec.mbal, rec.bal,
        rec.inp_host, rec.inp_generation,
    )
    return _seal(body, sector_size)


def unpack_dblock(
    data: bytes, offset: int = 0, host_id: int | None = None, max_hosts: int | None = None
) -> Dblock:
    """Decode and range-check a dblock; ``host_id``: the slot it was read from."""
    f = _open("dblock", _DBLOCK, DBLOCK_MAGIC, data, offset)
    rec = Dblock(
        host_id=f[2], flags=f[3], lver=f[4], mbal=f[5], bal=f[6], inp_host=f[7],
        inp_generation=f[8],
    )
    problem = check_dblock(rec, host_id, max_hosts)
    if problem:
        raise RecordError("dblock", offset, problem)
    return rec


# Range checks (pure): the reason a checksum-valid record is unusable, or None.


def _host_problem(what: str, value: int, slot: int | None) -> str | None:
    if not 1 <= value <= MAX_HOST_ID:
        return f"{what} {value} not in 1..{MAX_HOST_ID}"
    if slot is not None and value != slot:
        return f"{what} {value} in the slot of host {slot}"
    return None


def check_delta(rec: DeltaRecord, slot: int | None = None) -> str | None:
    if rec.sector_size not in SECTOR_SIZES:
        return f"sector_size {rec.sector_size}"
    if not 1 <= rec.max_hosts <= MAX_HOST_ID:
        return f"max_hosts {rec.max_hosts} not in 1..{MAX_HOST_ID}"
    problem = _host_problem("host_id", rec.host_id, slot)
    if problem:
        return problem
    if rec.flags:
        return f"unknown flags {rec.flags:#x}"
    if rec.generation > MAX_GENERATION:
        return f"generation {rec.generation} past {MAX_GENERATION}"
    if not rec.free and rec.generation == 0:
        return "held with generation 0"
    if rec.io_timeout_ms > MAX_IO_TIMEOUT_MS:
        return f"io_timeout_ms {rec.io_timeout_ms} past {MAX_IO_TIMEOUT_MS}"
    if rec.watchdog_ms > MAX_WATCHDOG_MS:
        return f"watchdog_ms {rec.watchdog_ms} past {MAX_WATCHDOG_MS}"
    return None


def check_leader(rec: LeaderRecord, max_hosts: int | None = None) -> str | None:
    limit = MAX_HOST_ID if max_hosts is None else max_hosts
    if rec.sector_size not in SECTOR_SIZES:
        return f"sector_size {rec.sector_size}"
    if not 1 <= rec.max_hosts <= MAX_HOST_ID:
        return f"max_hosts {rec.max_hosts} not in 1..{MAX_HOST_ID}"
    if rec.owner_id > limit:
        return f"owner_id {rec.owner_id} past {limit}"
    if rec.write_id > MAX_HOST_ID:
        return f"write_id {rec.write_id} past {MAX_HOST_ID}"
    if rec.flags & ~FLAG_RELEASED:
        return f"unknown flags {rec.flags:#x}"
    if rec.lver >= MAX_LVER:  # the next instance (lver + 1) must still be readable
        return f"lver {rec.lver} leaves no next instance (limit {MAX_LVER})"
    if rec.owner_generation > MAX_GENERATION:
        return f"owner_generation {rec.owner_generation} past {MAX_GENERATION}"
    if rec.owner_id and not rec.lver:
        return f"owner {rec.owner_id} at lver 0"
    if rec.io_timeout_ms > MAX_IO_TIMEOUT_MS:
        return f"io_timeout_ms {rec.io_timeout_ms} past {MAX_IO_TIMEOUT_MS}"
    return None


def check_dblock(
    rec: Dblock, slot: int | None = None, max_hosts: int | None = None
) -> str | None:
    limit = MAX_HOST_ID if max_hosts is None else max_hosts
    problem = _host_problem("host_id", rec.host_id, slot)
    if problem:
        return problem
    if rec.flags & ~FLAG_RELEASED:
        return f"unknown flags {rec.flags:#x}"
    if rec.lver >= MAX_LVER:
        return f"lver {rec.lver} past {MAX_LVER - 1}"
    if rec.mbal > MAX_BALLOT:
        return f"mbal {rec.mbal} past {MAX_BALLOT}"
    if rec.bal > rec.mbal:
        return f"bal {rec.bal} above mbal {rec.mbal}"
    if rec.inp_host > limit:
        return f"inp_host {rec.inp_host} past {limit}"
    if rec.bal and not rec.inp_host:
        return f"accepted ballot {rec.bal} without a value"
    if rec.inp_generation > MAX_GENERATION:
        return f"inp_generation {rec.inp_generation} past {MAX_GENERATION}"
    return None


def sectors(data: bytes, sector_size: int) -> list[bytes]:
    """Split an area read into its sectors."""
    return [data[i : i + sector_size] for i in range(0, len(data), sector_size)]
