"""The journal of metadata changes: its record format and the ring's arithmetic (pure, no I/O).

The SPM appends one record for every metadata change it makes (an extend that grew a
volume, a reduce that shrank one, an LV created or removed, the PVs of a VG resized:
``spm/volumeops.py``). The records live in a ring of
:data:`~autoextend.metadata_area.JOURNAL_RECORDS` fixed 256-byte slots in the metadata area
(``metadata_area.py``), so any host can read who grew what, and when, without the SPM.

Record ``seq`` (1, 2, ...) lives in slot ``(seq - 1) % JOURNAL_RECORDS``: the ring holds the
newest ``JOURNAL_RECORDS`` records and overwrites the oldest. The sequence number is the
order, across SPM terms too: a new SPM reads the ring, takes the highest valid ``seq`` as
the head and continues after it. A record also carries the SPM's term (``lver``) and the
wall clock, so a reader sees where the role moved and when.

Record (little-endian, 256 bytes)::

    0   4s   magic "AXJR"
    4   u8   version 1
    5   u8   op            Op: 1 extend, 2 reduce, 3 create, 4 remove, 5 grow-pv
    6   u8   name_len      length of "vg/lv", 3..NAME_FIELD ("vg/", 2..: a grow-pv,
                           which names a VG and no LV; its sizes are the resized PVs'
                           bytes before and after)
    7   u8   flags         bit 0 FOUND: the SPM found the volume grown past the last
                           size the journal had for it, and recorded the change late
                           (an SPM that died between its change and its record, or a
                           change made outside autoextend); the other bits 0
    8   u64  seq           1..2**63-1
    16  u64  lver          the SPM term (lease version) that made the change
    24  u64  time_us       wall clock of the SPM, microseconds since the epoch
    32  u64  old_size      bytes before the change (0: not known)
    40  u64  new_size      bytes after the change
    48  u32  request_id    the mailbox request that asked for it (0: none)
    52  u32  generation    the requesting host's generation (0: none)
    56  u16  spm_host      the SPM's host id, 1..2000
    58  u16  host          the requesting host's id, 0..2000 (0: none)
    60  u32  crc32         of the 256 bytes with this field zeroed
    64  192s name          ASCII "vg/lv", NUL padded

A sector holds 2 (512 B) or 16 (4 KiB) records and a record never spans two sectors. There
is no sector header: every record stands alone, so rewriting a sector to add a record
writes the records already in it again with the same bytes, and a torn write can damage
only the records being added. A slot that is all zeros is empty; one that fails any check
(magic, version, checksum, a field out of range, a ``seq`` that does not belong in that
slot) is torn or garbage: it is skipped and counted, never trusted.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from autoextend.metadata_area import JOURNAL_RECORD_SIZE, JOURNAL_RECORDS
from autoextend.names import is_valid_name

MAGIC = b"AXJR"
VERSION = 1
RECORD = struct.Struct("<4sBBBBQQQQQIIHHI192s")
RECORD_SIZE = JOURNAL_RECORD_SIZE
CRC_OFFSET = 60
NAME_FIELD = 192
MAX_SEQ = (1 << 63) - 1
MAX_U64 = (1 << 64) - 1
MAX_HOST_ID = 2000
FLAG_FOUND = 1
assert RECORD.size == RECORD_SIZE


class Op(enum.IntEnum):
    EXTEND = 1
    REDUCE = 2
    CREATE = 3  # old size 0
    REMOVE = 4  # new size 0
    GROW_PV = 5  # "vg/": the VG's resized PVs, bytes before and after


class BadRecord(ValueError):
    """The bytes of a slot are not a valid record."""


@dataclass(frozen=True)
class Entry:
    """One change: what the SPM appends (the journal gives it ``seq``)."""

    op: Op
    vg: str
    lv: str
    old_size: int
    new_size: int
    lver: int
    spm_host: int
    host: int = 0
    request_id: int = 0
    generation: int = 0
    time_us: int = 0
    found: bool = False  # recorded late (FLAG_FOUND)

    @property
    def volume(self) -> str:
        return f"{self.vg}/{self.lv}"


@dataclass(frozen=True)
class Record:
    seq: int
    entry: Entry


def _valid_lv(op: Op, lv: str) -> bool:
    """A grow-pv names no LV; every other op one valid LV."""
    return lv == "" if op is Op.GROW_PV else is_valid_name(lv)


def slot_of(seq: int, records: int = JOURNAL_RECORDS) -> int:
    """The ring slot of record ``seq`` (1-based sequence numbers)."""
    return (seq - 1) % records


def per_sector(sector_size: int) -> int:
    return sector_size // RECORD_SIZE


def encode(record: Record) -> bytes:
    """256 bytes; raises ValueError for a value no decoder would accept."""
    e = record.entry
    name = e.volume.encode("ascii", "replace")
    if not is_valid_name(e.vg) or not _valid_lv(e.op, e.lv) or len(name) > NAME_FIELD:
        raise ValueError(f"volume name not journaled: {e.volume!r}")
    if not 1 <= record.seq <= MAX_SEQ:
        raise ValueError(f"seq {record.seq} out of range")
    if not 1 <= e.spm_host <= MAX_HOST_ID or not 0 <= e.host <= MAX_HOST_ID:
        raise ValueError("host id out of range")
    for value in (e.lver, e.time_us, e.old_size, e.new_size):
        if not 0 <= value <= MAX_U64:
            raise ValueError(f"value {value} out of range")
    if not 0 <= e.request_id <= 0xFFFFFFFF or not 0 <= e.generation <= 0xFFFFFFFF:
        raise ValueError("request id or generation out of range")
    flags = FLAG_FOUND if e.found else 0
    out = bytearray(RECORD.pack(MAGIC, VERSION, int(e.op), len(name), flags, record.seq, e.lver,
                                e.time_us, e.old_size, e.new_size, e.request_id,
                                e.generation, e.spm_host, e.host, 0, name))
    struct.pack_into("<I", out, CRC_OFFSET, zlib.crc32(out))
    return bytes(out)


def decode(data: bytes) -> Record | None:
    """The record in ``data`` (256 bytes), None for an empty (all-zero) slot; BadRecord
    for anything else."""
    if len(data) != RECORD_SIZE:
        raise BadRecord(f"not one record ({len(data)} bytes)")
    if not any(data):
        return None
    (magic, version, op, name_len, flags, seq, lver, time_us, old_size, new_size,
     request_id, generation, spm_host, host, crc, name) = RECORD.unpack(data)
    if magic != MAGIC or version != VERSION:
        raise BadRecord("bad magic or version")
    check = bytearray(data)
    struct.pack_into("<I", check, CRC_OFFSET, 0)
    if zlib.crc32(check) != crc:
        raise BadRecord("bad checksum")
    if flags & ~FLAG_FOUND:
        raise BadRecord(f"unknown flags {flags:#x}")
    if op not in Op.__members__.values():
        raise BadRecord(f"unknown op {op}")
    if not 1 <= seq <= MAX_SEQ:
        raise BadRecord(f"seq {seq} out of range")
    if not 1 <= spm_host <= MAX_HOST_ID or host > MAX_HOST_ID:
        raise BadRecord("host id out of range")
    if not 2 <= name_len <= NAME_FIELD or any(name[name_len:]):
        raise BadRecord("bad name length or padding")
    try:
        vg, sep, lv = name[:name_len].decode("ascii").partition("/")
    except UnicodeDecodeError:
        raise BadRecord("name is not ASCII") from None
    if not sep or not is_valid_name(vg) or not _valid_lv(Op(op), lv):
        raise BadRecord("not a valid vg/lv name")
    return Record(seq, Entry(Op(op), vg, lv, old_size, new_size, lver, spm_host, host,
                             request_id, generation, time_us, bool(flags & FLAG_FOUND)))


@dataclass
class Scan:
    """What a read of (part of) the ring found: the valid records, and how many slots were
    torn or garbage (``skipped``) or empty."""

    records: list[Record]
    skipped: int = 0
    empty: int = 0

    @property
    def head(self) -> int:
        """The highest valid ``seq`` (0: the ring is empty)."""
        return max((r.seq for r in self.records), default=0)


def scan_slots(data: bytes, first_slot: int, records: int = JOURNAL_RECORDS) -> Scan:
    """Decode the slots in ``data`` (whole records, the first being slot ``first_slot``). A
    valid record whose ``seq`` does not belong in its slot is garbage (skipped)."""
    out = Scan([])
    for i, chunk in enumerate(_chunks(data)):
        try:
            rec = decode(chunk)
        except BadRecord:
            out.skipped += 1
            continue
        if rec is None:
            out.empty += 1
        elif slot_of(rec.seq, records) != first_slot + i:
            out.skipped += 1
        else:
            out.records.append(rec)
    return out


def merge(scans: list[Scan]) -> Scan:
    """One scan of the whole ring from its parts, records in ``seq`` order (a ``seq`` has
    one slot, so no two valid records share one)."""
    records = sorted((r for s in scans for r in s.records), key=lambda r: r.seq)
    return Scan(records, sum(s.skipped for s in scans), sum(s.empty for s in scans))


def _chunks(data: bytes) -> Iterator[bytes]:
    for at in range(0, len(data) - len(data) % RECORD_SIZE, RECORD_SIZE):
        yield data[at:at + RECORD_SIZE]


def place(sector: bytearray, slot_in_sector: int, record: Record) -> None:
    """Put ``record`` into its slot of a sector image."""
    at = slot_in_sector * RECORD_SIZE
    sector[at:at + RECORD_SIZE] = encode(record)
