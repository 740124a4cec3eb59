"""The SPM's committed-space record: a companion sector of the VG record (pure codec).

The VG record (``record.py``) has no spare byte left in its version 2 entries, and a new
version of it would make every host of the previous release refuse it during a rolling
upgrade (no VG figures, so no critical-level gate on those hosts until they are upgraded).
The committed space goes into a sector of its own instead, which earlier releases never
read: the sector before the VG record's 4 KiB, ``area offset + 4 MiB - 12 KiB``. Nothing
else reaches it at either sector size: the native paxos dblocks end at +2 MiB + 502 x 4 KiB
(500 hosts at 4 KiB sectors; 2002 x 512 B at 512 B), sanlock's lockspace and resource end at
+2 MiB, the VG record is at +4 MiB - 8 KiB and the engine record at +4 MiB - 4 KiB
(``tests/capacity/test_committed_record.py`` checks it). One writer (the SPM, checking its
term before every write); a zeroed sector means "never published".

Layout (little-endian)::

    0   4s   magic "AXCM"
    4   u8   version 1
    5   u8   count           VG entries that follow (<= (sector - 32) // 96)
    6   u16  reserved        0
    8   u32  host_id         the SPM that wrote it (1..2000)
    12  u32  crc32           of the whole sector with this field zeroed
    16  u64  seq             one more at every write
    24  u64  published_ms    wall-clock time of the write, ms since the Unix epoch
    32  entries, 96 bytes each:
        0  u8   name_len     1..64
        1  7s   reserved     0
        8  64s  name         ASCII VG name, NUL padded (lvm2 name rules)
        72 u64  size         the VG's bytes, < 2**63
        80 u64  committed    the known virtual sizes of its volumes, summed, < 2**63
        88 u32  volumes      its volumes, counted
        92 u32  unknown      of them, those of unknown virtual size, <= volumes

Why a wall-clock time: ``autoextend pool admit`` is a one-shot command on any host; it
cannot watch ``seq`` move for a while as the service's watcher does. A record older than
3 x ``[capacity] committed_interval_s`` (the SPM writes one every interval) is stale: no
SPM, a frozen one, or an SPM of an earlier release, which never writes this sector. The
hosts' clocks must agree within that margin (NTP); a record dated in the future by more than
it is stale too.

Rolling upgrade: hosts of the previous release never read or write this sector, and the VG
record stays as it was (version 1 or 2): nothing changes for them. While the SPM runs the
previous release, no record is written (or the last one goes stale), and ``pool admit`` on
an upgraded host says so (exit 2) instead of answering from old figures. A downgrade leaves
a record that goes stale by its time.

5 VGs fit in a 512 B sector, 42 in 4 KiB: the VG record's own capacity, so every VG the VG
record carries has its committed figures here (sorted by name, the rest left out).

I/O: the SPM writes one sector per ``committed_interval_s`` (30 s: 0.03 writes/s); reads
happen only when someone runs ``pool admit``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from autoextend.capacity import vgsector
from autoextend.capacity.admission import VgCommitted

# The frame's figures, as this record's callers and tests name them.
from autoextend.capacity.vgsector import CRC_OFFSET as CRC_OFFSET
from autoextend.capacity.vgsector import ENTRY_SIZE
from autoextend.capacity.vgsector import MAX_SIZE as MAX_SIZE
from autoextend.capacity.vgsector import U32_MAX as U32_MAX
from autoextend.capacity.vgsector import capacity as capacity
from autoextend.metadata_area import LEASE_AREA_SIZE

MAGIC = b"AXCM"
VERSION = 1
ENTRY = struct.Struct("<B7s64sQQII")
RECORD_FROM_END = 12288  # the VG record has the 4 KiB after it, the engine record the last
assert ENTRY.size == ENTRY_SIZE


class BadCommittedRecord(ValueError):
    """The sector is not a valid committed-space record."""


@dataclass(frozen=True)
class CommittedRecord:
    host_id: int
    seq: int
    published_ms: int
    vgs: tuple[VgCommitted, ...]


def record_offset(area_offset: int, sector_size: int) -> int:
    """Absolute offset of the record (``area offset + 4 MiB - 12 KiB``)."""
    assert sector_size <= 4096
    return area_offset + LEASE_AREA_SIZE - RECORD_FROM_END


def encode(rec: CommittedRecord, sector_size: int) -> bytes:
    """One sector; entries past its capacity are left out (sorted by name first).
    ValueError for values no decoder would accept."""
    vgs = sorted(rec.vgs, key=lambda v: v.vg)[: capacity(sector_size)]
    vgsector.check_writer(rec.host_id, rec.seq)
    if not 0 <= rec.published_ms <= MAX_SIZE:
        raise ValueError("published_ms out of range")
    out = bytearray(sector_size)
    for i, v in enumerate(vgs):
        name = vgsector.name_field(v.vg)
        if not (0 <= v.size <= MAX_SIZE and 0 <= v.committed <= MAX_SIZE
                and 0 <= v.unknown <= v.volumes <= U32_MAX):
            raise ValueError(f"VG {v.vg}: figures out of range")
        ENTRY.pack_into(out, vgsector.entry_at(i), len(name), bytes(7), name, v.size,
                        v.committed, v.volumes, v.unknown)
    return vgsector.seal(out, MAGIC, vgsector.Header(VERSION, len(vgs), rec.host_id, rec.seq,
                                                     rec.published_ms))


def decode(data: bytes) -> CommittedRecord | None:
    """The record in ``data`` (one sector), None for a zeroed sector; BadCommittedRecord
    for anything that fails a check."""
    head = vgsector.open_sector(data, MAGIC, (VERSION,), BadCommittedRecord)
    if head is None:
        return None
    if head.stamp > MAX_SIZE:
        raise BadCommittedRecord("time out of range")
    vgs = []
    for i in range(head.count):
        name_len, pad, name, size, committed, volumes, unknown = ENTRY.unpack_from(
            data, vgsector.entry_at(i))
        if any(pad):
            raise BadCommittedRecord(f"entry {i}: reserved field is not zero")
        vg = vgsector.entry_name(i, name_len, name, BadCommittedRecord)
        if size > MAX_SIZE or committed > MAX_SIZE:
            raise BadCommittedRecord(f"entry {i}: size or committed out of range")
        if unknown > volumes:
            raise BadCommittedRecord(f"entry {i}: more unknown volumes than volumes")
        vgs.append(VgCommitted(vg, size, committed, volumes, unknown))
    vgsector.check_unique((v.vg for v in vgs), BadCommittedRecord)
    return CommittedRecord(head.host_id, head.seq, head.stamp, tuple(vgs))
