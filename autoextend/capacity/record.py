"""The SPM's VG record: one sector in the metadata area that every host reads (pure codec).

In mailbox mode only the SPM runs ``vgs`` (the authoritative view); it publishes each pool
VG's size and free bytes here, and every other host's watcher reads this sector instead of
asking lvm2. Where: the first sector of the lease area's second-to-last 4 KiB
(``area offset + 4 MiB - 8 KiB``): the paxos leases use sectors 2..max_hosts+1 of their 2 MiB,
which leaves it free at both sector sizes (2000 hosts x 512 B, 500 hosts x 4 KiB), and the
lease engine's record (``lease/engine_record.py``) has the last 4 KiB. One writer (the SPM,
checking its term before every write); a zeroed sector means "never published".

Layout (little-endian)::

    0   4s   magic "AXCP"
    4   u8   version 1 or 2
    5   u8   count           VG entries that follow (<= (sector - 32) // 96)
    6   u16  reserved        0
    8   u32  host_id         the SPM that wrote it (1..2000)
    12  u32  crc32           of the whole sector with this field zeroed
    16  u64  seq             one more at every write (hosts tell a live record by it)
    24  u64  reserved        0
    32  entries, 96 bytes each; version 1:
        0  u8   name_len     1..64
        1  7s   reserved     0
        8  64s  name         ASCII VG name, NUL padded (lvm2 name rules)
        72 u64  size         bytes, < 2**63
        80 u64  free         bytes, <= size
        88 u64  reserved     0
    version 2 gives the reserved bytes of an entry the VG's metadata figures:
        1  u8   flags        bit 0: the mda fields are set; bit 1: the segment fields are
                             set; the other bits 0 (a field not set is 0)
        2  u16  max_segments the most segments of one LV (65535 stands for more)
        4  u32  segments     the VG's LV segments in all (2**32-1 stands for more)
        88 u32  mda_size     metadata area size in 512-byte units (lvm2 counts it in
                             sectors; 2**32-1 stands for 2 TiB or more)
        92 u32  mda_free     metadata area free, 512-byte units, <= mda_size

The SPM writes version 1 when no VG has metadata figures (the loop backend), so a pool
that has none reads the same record as before; with them it writes version 2, which a host
of an earlier release refuses as it refuses any record it cannot check ("unusable",
counted, never acted on): during a rolling upgrade such a host has no VG figures until it
runs this release (its extensions are not held back by the record then, as without one).
Values past a field's range are clamped, never wrapped; ``mda_size`` and ``mda_free`` are
rounded down to 512 bytes (lvm2 reports them in whole sectors, so nothing is lost).

5 VGs fit in a 512 B sector, 42 in 4 KiB; a pool with more VGs publishes the first ones by
name (the rest have no figures on other hosts, logged once by the SPM). Every field is
range-checked on decode; a sector that fails any check is not a record (never acted on).

I/O: the SPM writes one sector when the figures change and at least every
``[capacity] publish_interval_s`` (5 s: 0.2 writes/s); each other host reads one sector every
``[capacity] poll_interval_s`` (0.5 s: 1 KiB/s at 512 B, 8 KiB/s at 4 KiB sectors, per host).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from autoextend.capacity import vgsector
from autoextend.capacity.figures import VgFigures

# The frame's figures, as this record's callers and tests name them.
from autoextend.capacity.vgsector import CRC_OFFSET as CRC_OFFSET
from autoextend.capacity.vgsector import ENTRY_SIZE
from autoextend.capacity.vgsector import MAX_SIZE as MAX_SIZE
from autoextend.capacity.vgsector import U32_MAX as U32_MAX
from autoextend.capacity.vgsector import capacity as capacity
from autoextend.metadata_area import LEASE_AREA_SIZE

MAGIC = b"AXCP"
VERSION = 1
VERSION_MDA = 2
ENTRY = struct.Struct("<B7s64sQQQ")
ENTRY_MDA = struct.Struct("<BBHI64sQQII")
FLAG_MDA = 1
FLAG_SEGMENTS = 2
MDA_UNIT = 512
U16_MAX = (1 << 16) - 1
assert ENTRY.size == ENTRY_SIZE == ENTRY_MDA.size


class BadRecord(ValueError):
    """The sector is not a valid VG record."""


@dataclass(frozen=True)
class VgRecord:
    host_id: int
    seq: int
    figures: tuple[VgFigures, ...]


RECORD_FROM_END = 8192  # the engine record owns the last 4 KiB; this one the 4 KiB before


def record_offset(area_offset: int, sector_size: int) -> int:
    """Absolute offset of the record: one sector (of ``sector_size``, at most 4 KiB) at
    ``area offset + 4 MiB - 8 KiB``."""
    assert sector_size <= RECORD_FROM_END // 2
    return area_offset + LEASE_AREA_SIZE - RECORD_FROM_END


def _has_mda(f: VgFigures) -> bool:
    return f.mda_size is not None and f.mda_free is not None


def _has_segments(f: VgFigures) -> bool:
    return f.segments is not None and f.max_segments is not None


def published(f: VgFigures) -> VgFigures:
    """``f`` as a record carries it: metadata figures rounded down to 512 bytes and every
    field clamped to its range (what :func:`decode` gives back)."""
    mda_size = mda_free = segments = max_segments = None
    if f.mda_size is not None and f.mda_free is not None:
        mda_size = min(f.mda_size // MDA_UNIT, U32_MAX) * MDA_UNIT
        mda_free = min(f.mda_free // MDA_UNIT, U32_MAX) * MDA_UNIT
    if f.segments is not None and f.max_segments is not None:
        segments, max_segments = min(f.segments, U32_MAX), min(f.max_segments, U16_MAX)
    return VgFigures(f.vg, f.size, f.free, mda_size, mda_free, segments, max_segments)


def encode(record: VgRecord, sector_size: int) -> bytes:
    """One sector. Entries past the sector's capacity are left out (sorted by name first);
    version 2 when a VG has metadata figures (see the module docs); raises ValueError for
    values no decoder would accept."""
    figs = sorted(record.figures, key=lambda f: f.vg)[: capacity(sector_size)]
    vgsector.check_writer(record.host_id, record.seq)
    version = VERSION_MDA if any(_has_mda(f) or _has_segments(f) for f in figs) else VERSION
    out = bytearray(sector_size)
    for i, f in enumerate(figs):
        name = vgsector.name_field(f.vg)
        if not 0 <= f.free <= f.size <= MAX_SIZE:
            raise ValueError(f"VG {f.vg}: sizes out of range")
        at = vgsector.entry_at(i)
        if version == VERSION:
            ENTRY.pack_into(out, at, len(name), bytes(7), name, f.size, f.free, 0)
            continue
        if any(v is not None and v < 0 for v in (f.mda_size, f.mda_free, f.segments,
                                                   f.max_segments)):
            raise ValueError(f"VG {f.vg}: negative metadata figures")
        if f.mda_size is not None and f.mda_free is not None and f.mda_free > f.mda_size:
            raise ValueError(f"VG {f.vg}: metadata area free past its size")
        if f.segments is not None and f.max_segments is not None \
                and f.max_segments > f.segments:
            raise ValueError(f"VG {f.vg}: one LV has more segments than the VG")
        p = published(f)
        flags = (FLAG_MDA if _has_mda(p) else 0) | (FLAG_SEGMENTS if _has_segments(p) else 0)
        ENTRY_MDA.pack_into(out, at, len(name), flags, p.max_segments or 0, p.segments or 0,
                            name, f.size, f.free, (p.mda_size or 0) // MDA_UNIT,
                            (p.mda_free or 0) // MDA_UNIT)
    return vgsector.seal(out, MAGIC, vgsector.Header(version, len(figs), record.host_id,
                                                     record.seq, 0))


def decode(data: bytes) -> VgRecord | None:
    """The record in ``data`` (one sector), None for a zeroed sector; BadRecord otherwise."""
    head = vgsector.open_sector(data, MAGIC, (VERSION, VERSION_MDA), BadRecord)
    if head is None:
        return None
    if head.stamp:
        raise BadRecord("reserved header fields are not zero")
    figs = []
    for i in range(head.count):
        at = vgsector.entry_at(i)
        if head.version == VERSION:
            name_len, pad, name, size, free, zero = ENTRY.unpack_from(data, at)
            if any(pad) or zero:
                raise BadRecord(f"entry {i}: reserved field is not zero")
            extra: tuple[int | None, ...] = (None, None, None, None)
        else:
            name_len, flags, max_segs, segs, name, size, free, mda_size, mda_free = \
                ENTRY_MDA.unpack_from(data, at)
            extra = _metadata_fields(i, flags, max_segs, segs, mda_size, mda_free)
        vg = vgsector.entry_name(i, name_len, name, BadRecord)
        if not 0 <= free <= size <= MAX_SIZE:
            raise BadRecord(f"entry {i}: free past size, or out of range")
        figs.append(VgFigures(vg, size, free, *extra))
    vgsector.check_unique((f.vg for f in figs), BadRecord)
    return VgRecord(head.host_id, head.seq, tuple(figs))


def _metadata_fields(i: int, flags: int, max_segs: int, segs: int, mda_size: int,
                     mda_free: int) -> tuple[int | None, ...]:
    """(mda_size, mda_free, segments, max_segments) of a version 2 entry, checked."""
    if flags & ~(FLAG_MDA | FLAG_SEGMENTS):
        raise BadRecord(f"entry {i}: unknown flags {flags:#x}")
    if not flags & FLAG_MDA and (mda_size or mda_free):
        raise BadRecord(f"entry {i}: metadata area fields set without their flag")
    if not flags & FLAG_SEGMENTS and (segs or max_segs):
        raise BadRecord(f"entry {i}: segment fields set without their flag")
    if mda_free > mda_size:
        raise BadRecord(f"entry {i}: metadata area free past its size")
    if flags & FLAG_SEGMENTS and max_segs > segs:
        raise BadRecord(f"entry {i}: one LV has more segments than the VG")
    mda = (mda_size * MDA_UNIT, mda_free * MDA_UNIT) if flags & FLAG_MDA else (None, None)
    seg = (segs, max_segs) if flags & FLAG_SEGMENTS else (None, None)
    return (*mda, *seg)
