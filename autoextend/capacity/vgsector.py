"""The sector frame the SPM's two VG records share (pure): the VG record (``record.py``) and
the committed-space record (``committed_record.py``). Each module owns its magic, versions,
entry fields and place; this one the header, the checksum, the name field and the checks
that are the same in both.

Frame (little-endian)::

    0   4s   magic           the record's own
    4   u8   version         the record's own
    5   u8   count           entries that follow (<= (sector - 32) // 96)
    6   u16  reserved        0
    8   u32  host_id         the SPM that wrote it (1..2000)
    12  u32  crc32           of the whole sector with this field zeroed
    16  u64  seq             one more at every write, < 2**63
    24  u64  stamp           the record's own (0 in the VG record, the time of the write
                             in the committed-space record)
    32  entries, 96 bytes each; each holds its VG's name as
        0  u8   name_len     1..64
        8  64s  name         ASCII VG name, NUL padded (lvm2 name rules)
    then zeros to the sector's end.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from autoextend.names import is_valid_name

HEADER = struct.Struct("<4sBBHIIQQ")
HEADER_SIZE = 32
ENTRY_SIZE = 96
NAME_FIELD = 64
CRC_OFFSET = 12
MAX_HOST_ID = 2000
MAX_SIZE = (1 << 63) - 1
U32_MAX = (1 << 32) - 1
assert HEADER.size == HEADER_SIZE


@dataclass(frozen=True)
class Header:
    version: int
    count: int
    host_id: int
    seq: int
    stamp: int


def capacity(sector_size: int) -> int:
    """Entries that fit one sector."""
    return (sector_size - HEADER_SIZE) // ENTRY_SIZE


def entry_at(i: int) -> int:
    return HEADER_SIZE + i * ENTRY_SIZE


def check_writer(host_id: int, seq: int) -> None:
    """ValueError for a host id or seq no decoder would accept."""
    if not 1 <= host_id <= MAX_HOST_ID or not 0 <= seq <= MAX_SIZE:
        raise ValueError("host_id or seq out of range")


def name_field(vg: str) -> bytes:
    """``vg`` as its name field holds it; ValueError for a name no decoder would accept."""
    name = vg.encode("ascii", errors="replace")
    if not is_valid_name(vg) or len(name) > NAME_FIELD:
        raise ValueError(f"VG name not publishable: {vg!r}")
    return name


def seal(out: bytearray, magic: bytes, header: Header) -> bytes:
    """``out`` (its entries packed) with the header written and the checksum set."""
    HEADER.pack_into(out, 0, magic, header.version, header.count, 0, header.host_id, 0,
                     header.seq, header.stamp)
    struct.pack_into("<I", out, CRC_OFFSET, zlib.crc32(out))
    return bytes(out)


def open_sector(data: bytes, magic: bytes, versions: Iterable[int],
                bad: type[ValueError]) -> Header | None:
    """The checked header of ``data`` (one sector), None for a zeroed sector; raises
    ``bad`` for a frame that fails a check. The stamp and the entries are the caller's."""
    if not any(data):
        return None
    if len(data) not in (512, 4096):
        raise bad(f"not one sector ({len(data)} bytes)")
    got, version, count, reserved, host_id, crc, seq, stamp = HEADER.unpack_from(data)
    if got != magic or version not in versions:
        raise bad("bad magic or version")
    check = bytearray(data)
    struct.pack_into("<I", check, CRC_OFFSET, 0)
    if zlib.crc32(check) != crc:
        raise bad("bad checksum")
    if reserved:
        raise bad("reserved header field is not zero")
    if not 1 <= host_id <= MAX_HOST_ID:
        raise bad(f"host id {host_id} out of range")
    if seq > MAX_SIZE:
        raise bad("seq out of range")
    if count > capacity(len(data)):
        raise bad(f"{count} entries do not fit")
    if any(data[entry_at(count):]):
        raise bad("bytes after the last entry are not zero")
    return Header(version, count, host_id, seq, stamp)


def entry_name(i: int, name_len: int, name: bytes, bad: type[ValueError]) -> str:
    """The VG name of entry ``i`` (its length and name fields), checked; raises ``bad``."""
    if not 1 <= name_len <= NAME_FIELD or any(name[name_len:]):
        raise bad(f"entry {i}: bad name length or padding")
    try:
        vg = name[:name_len].decode("ascii")
    except UnicodeDecodeError:
        raise bad(f"entry {i}: name is not ASCII") from None
    if not is_valid_name(vg):
        raise bad(f"entry {i}: not a valid VG name")
    return vg


def check_unique(vgs: Iterable[str], bad: type[ValueError]) -> None:
    listed = list(vgs)
    if len(set(listed)) != len(listed):
        raise bad("a VG appears twice")
