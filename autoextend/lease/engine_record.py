"""The engine record: which lease engine a pool's metadata area is formatted for.

One sector in the last 4 KiB of the lease area (``offset + 4 MiB - 4 KiB``), which neither
engine's records reach (native: delta records end below +2 MiB and dblocks below +4 MiB - 4
KiB at both sector sizes; sanlock: lockspace +0..1 MiB, resource +1..2 MiB). ``autoextend
lease init`` writes it; every host reads it before it joins and refuses to start when its
``[lease] engine`` (or, for sanlock, the lockspace name or location) differs: two engines on
one pool would elect two SPMs, since neither sees the other's lease.

Layout (little-endian, CRC-32 of the bytes before it, rest of the sector zero)::

    magic u32 "AENG", version u16, reserved u16, engine 16 s, lockspace 48 s, location 256 s

An area formatted before the record existed has zeros there: a native host accepts that
(its own records say whether the area is formatted), a sanlock host does not.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from autoextend.errors import StartupError
from autoextend.lease.config import LeaseSettings
from autoextend.lease.layout import LEASE_AREA_SIZE
from autoextend.sectors import SectorStorage

MAGIC = 0x474E4541  # "AENG" little-endian
VERSION = 1
RECORD_SPAN = 4096  # the record's sector lies in the lease area's last 4 KiB
_BODY = struct.Struct("<IHH16s48s256s")
_CRC = struct.Struct("<I")
ENGINES = ("native", "sanlock")


@dataclass(frozen=True)
class EngineRecord:
    engine: str
    lockspace: str = ""   # sanlock: the lockspace name
    location: str = ""    # sanlock: "" (in the lease area) or the sanlock_path


class BadEngineRecord(ValueError):
    """The sector holds something that is not a valid engine record."""


def record_offset(area_offset: int) -> int:
    return area_offset + LEASE_AREA_SIZE - RECORD_SPAN


def for_settings(settings: LeaseSettings) -> EngineRecord:
    if settings.engine == "sanlock":
        return EngineRecord("sanlock", settings.sanlock_lockspace, settings.sanlock_path)
    return EngineRecord("native")


def pack(record: EngineRecord, sector_size: int) -> bytes:
    body = _BODY.pack(MAGIC, VERSION, 0, record.engine.encode(), record.lockspace.encode(),
                      record.location.encode("utf-8", "surrogateescape"))
    data = body + _CRC.pack(zlib.crc32(body))
    return data + bytes(sector_size - len(data))


def unpack(raw: bytes) -> EngineRecord | None:
    """None for an all-zero sector (no record); BadEngineRecord for anything unreadable."""
    if not any(raw):
        return None
    if len(raw) < _BODY.size + _CRC.size:
        raise BadEngineRecord(f"short sector ({len(raw)} bytes)")
    body = raw[:_BODY.size]
    magic, version, _, engine, lockspace, location = _BODY.unpack(body)
    if magic != MAGIC:
        raise BadEngineRecord(f"bad magic {magic:#010x}")
    if version != VERSION:
        raise BadEngineRecord(f"unsupported version {version}")
    if _CRC.unpack_from(raw, _BODY.size)[0] != zlib.crc32(body):
        raise BadEngineRecord("bad checksum")
    name = engine.rstrip(b"\0").decode(errors="replace")
    if name not in ENGINES:
        raise BadEngineRecord(f"unknown engine {name!r}")
    return EngineRecord(name, lockspace.rstrip(b"\0").decode(errors="replace"),
                        location.rstrip(b"\0").decode("utf-8", "surrogateescape"))


def describe(record: EngineRecord) -> str:
    if record.engine == "sanlock":
        where = record.location or "the lease area"
        return f'lease.engine = "sanlock" (lockspace {record.lockspace!r} in {where})'
    return 'lease.engine = "native"'


def mismatch(found: EngineRecord | None, wanted: EngineRecord) -> str | None:
    """Why a host configured for ``wanted`` must not join an area holding ``found``."""
    if found is None:
        if wanted.engine == "native":
            return None  # an area formatted before the record existed
        return (f"is not formatted for {describe(wanted)} (run `autoextend lease init` with "
                "that engine while no host uses the area)")
    if found != wanted:
        return (f"is formatted for {describe(found)}, this host is configured for "
                f"{describe(wanted)}: every host of a pool must use the same lease engine")
    return None


async def write_record(storage: SectorStorage, settings: LeaseSettings) -> None:
    await storage.write(record_offset(settings.offset),
                        pack(for_settings(settings), storage.sector_size))


async def read_record(storage: SectorStorage, area_offset: int) -> EngineRecord | None:
    raw = await storage.read(record_offset(area_offset), storage.sector_size)
    return unpack(raw)


async def check_engine(storage: SectorStorage, settings: LeaseSettings) -> None:
    """Refuse (StartupError, one line) to run ``settings.engine`` on an area formatted for
    another engine or another sanlock lockspace."""
    what = f"lease.path {settings.path}"
    try:
        found = await read_record(storage, settings.offset)
    except BadEngineRecord as err:
        raise StartupError(what, f"unreadable engine record ({err}): run `autoextend lease "
                                 "init` while no host uses the area") from None
    reason = mismatch(found, for_settings(settings))
    if reason is not None:
        raise StartupError(what, reason)
