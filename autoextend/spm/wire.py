"""The mailbox wire format: sector and slot encodings as named constants and pure functions.

Every mailbox sector stands alone: a 16-byte header (magic, version, sector index, host id,
generation, crc32 of the whole sector) followed by fixed 120-byte slots. One sector is the
unit of atomic write on real storage, so a torn write shows up as a bad checksum in one
sector, and a multi-sector write that stopped halfway leaves each sector either old or new:
both are complete, consistent sectors, because a slot never spans two sectors.

An all-zero sector is valid and empty (a freshly zeroed metadata area needs no formatting).

Request slot (host -> SPM), 120 bytes::

    0   u32  request_id     0 = empty slot
    4   u16  reserved       0
    6   u8   name_len       length of "vg/lv"
    7   u8   op             0 = extend, 1 = reduce (was reserved: an SPM of the first
                            format answers a reduce MALFORMED and never acts on it),
                            2 = reduce check (``volume reduce --dry-run``: the SPM
                            answers what a reduce would get, and never acts; an SPM
                            that predates it answers MALFORMED "unknown op 2"),
                            3 = create, 4 = remove, 5 = grow PV (``spm/volumeops.py``;
                            an SPM that predates them answers MALFORMED "unknown op N"
                            and never acts)
    8   u64  size           extend: to at least this many bytes; reduce and reduce
                            check: to this size; create: the LV's initial size; remove
                            and grow PV: 1 (unused)
    16  104s name           ASCII "vg/lv", NUL padded; grow PV: "vg/" (no LV); create:
                            the name in the first 96 bytes, and at 112 (the field's last
                            8 bytes) a u64 the volume's virtual size (capacity)

Reply slot (SPM -> host), 120 bytes::

    0   u32  request_id     0 = empty slot
    4   u32  generation     the requesting host's generation (from its request sector)
    8   u64  size           the volume's size after the extend or reduce (0 if
                            unknown); a reduce check's OK: the size the reduce would
                            leave (``spm/reducing.py``)
    16  u8   status         Status
    17  u8   reason         ReasonCode
    18  u8   text_len
    19  u8   reserved       0
    20  100s text           UTF-8 reason text, NUL padded

Ring sector (host -> SPM), one whole sector per host, written only by that host; it is
sector 0 of the host's requests and holds the first ``head_slots`` request slots::

    0   16s  header         magic "AXRG", version, index 0, host id, generation, crc32
    16  u64  count          one more on every write of this sector; 0 = never written
    24  u32  box_seq        one more on every write of the box sectors (1..n)
    28  u32  reserved       0
    32  request slots       (512 - 32) // 120 = 4, or (4096 - 32) // 120 = 33

All integers are little-endian.

Range checks: a sector whose checksum is right is still checked field by field. A host's
generation (ring and request sector headers, reply slots) must be 1..``HOST_GENERATION_LIMIT``
(a new generation adds at most 2**20 + 1 and must still fit 32 bits); a sector carrying
another is corrupt, a reply slot carrying another is malformed. Sizes, request ids, counts
and ``box_seq`` are only compared or validated later (``validate.py``), so every value of
their field is usable. The reply sector header holds the SPM's epoch, which is any u32.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from autoextend.spm.errors import CorruptSector
from autoextend.spm.sealing import crc_of, seal

VERSION = 1
REQUEST_MAGIC = b"AXRQ"
REPLY_MAGIC = b"AXRP"
RING_MAGIC = b"AXRG"

HEADER = struct.Struct("<4sBBHII")  # magic, version, sector index, host id, generation, crc
HEADER_SIZE = HEADER.size  # 16
CRC_OFFSET = 12
SLOT_SIZE = 120

REQUEST_SLOT = struct.Struct("<IHBBQ104s")
REPLY_SLOT = struct.Struct("<IIQBBBB100s")
NAME_FIELD = 104
TEXT_FIELD = 100

MAX_REQUEST_ID = 0xFFFFFFFF
MAX_GENERATION = 0xFFFFFFFF
# A host generation in 1..HOST_GENERATION_LIMIT; the next one (+1, + a jump of at most
# 2**20 when a sector is unreadable) still fits 32 bits (generation.after).
GENERATION_JUMP_MAX = 1 << 20
HOST_GENERATION_LIMIT = MAX_GENERATION - 2 * GENERATION_JUMP_MAX
MAX_SIZE = (1 << 64) - 1
RING_BODY = struct.Struct("<QII")  # count, box_seq, reserved
RING_HEADER_SIZE = HEADER_SIZE + RING_BODY.size  # 32
MAX_RING_COUNT = (1 << 64) - 1

assert HEADER_SIZE == 16
assert REQUEST_SLOT.size == SLOT_SIZE and REPLY_SLOT.size == SLOT_SIZE


class Kind(enum.Enum):
    REQUEST = REQUEST_MAGIC
    REPLY = REPLY_MAGIC


class Status(enum.IntEnum):
    OK = 1
    FAILED = 2  # may succeed if retried (VG full for now, I/O error)
    REJECTED = 3  # will never succeed as asked (bad name, VG outside the pool, size too big)


class ReasonCode(enum.IntEnum):
    NONE = 0
    VG_NOT_IN_POOL = 1
    BAD_NAME = 2
    BAD_SIZE = 3
    SIZE_TOO_LARGE = 4
    MALFORMED = 5
    NO_SUCH_VOLUME = 6
    NO_SPACE = 7
    VOLUME_ERROR = 8
    INTERNAL = 9
    VOLUME_BUSY = 10  # reduce: a host asked to extend the volume within hot_window_s
    VOLUME_EXISTS = 11  # create: another volume of that name exists (only new ops get it)


@dataclass(frozen=True)
class MalformedSlot:
    """A non-empty slot in a sector with a good checksum whose fields make no sense."""

    request_id: int
    problem: str


OP_EXTEND = 0
OP_REDUCE = 1
OP_REDUCE_CHECK = 2
OP_CREATE = 3
OP_REMOVE = 4
OP_GROW_PV = 5
OPS = (OP_EXTEND, OP_REDUCE, OP_REDUCE_CHECK, OP_CREATE, OP_REMOVE, OP_GROW_PV)
REDUCE_OPS = (OP_REDUCE, OP_REDUCE_CHECK)
VOLUME_OPS = (OP_CREATE, OP_REMOVE, OP_GROW_PV)  # one writer for the pool (volumeops.py)
CREATE_NAME_FIELD = NAME_FIELD - 8  # a create's name; its virtual size takes the rest
VSIZE = struct.Struct("<Q")


@dataclass(frozen=True)
class Request:
    request_id: int
    vg: str
    lv: str
    size: int
    op: int = OP_EXTEND
    vsize: int = 0  # create only: the volume's virtual size (its capacity), bytes
    parent: str = ""  # create only: the LV (same VG) a qcow2 overlay is made on (snapshot)


@dataclass(frozen=True)
class Reply:
    request_id: int
    generation: int
    status: Status
    size: int = 0
    reason: ReasonCode = ReasonCode.NONE
    text: str = ""


@dataclass(frozen=True)
class Sector:
    """One decoded sector: ``slots[i]`` is None for an empty slot, a MalformedSlot for a
    non-empty slot whose fields make no sense (checksum was right: a buggy writer)."""

    kind: Kind
    index: int
    host_id: int
    generation: int
    slots: tuple[Request | Reply | MalformedSlot | None, ...]


def slots_per_sector(sector_size: int) -> int:
    return (sector_size - HEADER_SIZE) // SLOT_SIZE


# Slots.


def encode_request(req: Request | None) -> bytes:
    if req is None:
        return bytes(SLOT_SIZE)
    if req.parent and req.op != OP_CREATE:
        raise ValueError("only a create names a parent")
    # A snapshot LV's create carries its parent as a third part: "vg/lv/parent" (an SPM
    # without snapshots reads the LV name "lv/parent" and rejects it: BAD_NAME).
    name = f"{req.vg}/{req.lv}{'/' if req.parent else ''}{req.parent}".encode("ascii")
    if not 0 < req.request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id out of range: {req.request_id}")
    if len(name) > NAME_FIELD:
        raise ValueError(f"volume name longer than {NAME_FIELD} bytes: {name!r}")
    if not 0 <= req.size <= MAX_SIZE:
        raise ValueError(f"size out of range: {req.size}")
    if req.op not in OPS:
        raise ValueError(f"unknown op: {req.op}")
    if req.op == OP_CREATE:
        if len(name) > CREATE_NAME_FIELD:
            raise ValueError(f"volume name longer than {CREATE_NAME_FIELD} bytes: {name!r}")
        if not 0 < req.vsize <= MAX_SIZE:
            raise ValueError(f"virtual size out of range: {req.vsize}")
        field = name.ljust(CREATE_NAME_FIELD, b"\0") + VSIZE.pack(req.vsize)
        return REQUEST_SLOT.pack(req.request_id, 0, len(name), req.op, req.size, field)
    if req.vsize:
        raise ValueError("only a create carries a virtual size")
    return REQUEST_SLOT.pack(req.request_id, 0, len(name), req.op, req.size, name)


def decode_request(raw: bytes) -> Request | MalformedSlot | None:
    request_id, reserved1, name_len, op, size, name = REQUEST_SLOT.unpack(raw)
    if request_id == 0:
        return None
    if reserved1:
        return MalformedSlot(request_id, "reserved bytes are not zero")
    if op not in OPS:
        return MalformedSlot(request_id, f"unknown op {op}")
    vsize = 0
    if op == OP_CREATE:
        (vsize,) = VSIZE.unpack(name[CREATE_NAME_FIELD:])
        name = name[:CREATE_NAME_FIELD]
        if vsize == 0:
            return MalformedSlot(request_id, "a create without a virtual size")
    if not 0 < name_len <= len(name) or any(name[name_len:]):
        return MalformedSlot(request_id, "bad name length or padding")
    try:
        text = name[:name_len].decode("ascii")
    except UnicodeDecodeError:
        return MalformedSlot(request_id, "volume name is not ASCII")
    vg, sep, lv = text.partition("/")
    if not sep:
        return MalformedSlot(request_id, "volume name is not vg/lv")
    if op == OP_GROW_PV and lv:
        return MalformedSlot(request_id, "a grow PV names a VG only (\"vg/\")")
    parent = ""
    if op == OP_CREATE and "/" in lv:
        lv, _, parent = lv.partition("/")
        if not lv or not parent:
            return MalformedSlot(request_id, "a snapshot create is vg/lv/parent")
    return Request(request_id, vg, lv, size, op, vsize, parent)


def encode_reply(reply: Reply | None) -> bytes:
    if reply is None:
        return bytes(SLOT_SIZE)
    if not 0 < reply.request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id out of range: {reply.request_id}")
    text = truncate_utf8(reply.text, TEXT_FIELD)
    return REPLY_SLOT.pack(
        reply.request_id, reply.generation, min(max(reply.size, 0), MAX_SIZE),
        int(reply.status), int(reply.reason), len(text), 0, text,
    )


def truncate_utf8(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of UTF-8, cut on a character boundary."""
    data = text.encode("utf-8", errors="replace")[:limit]
    return data.decode("utf-8", errors="ignore").encode("utf-8")


def decode_reply(raw: bytes) -> Reply | MalformedSlot | None:
    request_id, generation, size, status, reason, text_len, reserved, text = REPLY_SLOT.unpack(
        raw
    )
    if request_id == 0:
        return None
    if reserved or text_len > TEXT_FIELD or any(text[text_len:]):
        return MalformedSlot(request_id, "bad reserved bytes, text length or padding")
    if not 1 <= generation <= HOST_GENERATION_LIMIT:
        return MalformedSlot(request_id, f"generation {generation} out of range")
    try:
        return Reply(
            request_id, generation, Status(status), size, ReasonCode(reason),
            text[:text_len].decode("utf-8"),
        )
    except (ValueError, UnicodeDecodeError):
        return MalformedSlot(request_id, "unknown status or reason code, or bad text")


# Sectors.


def encode_sector(
    kind: Kind,
    sector_size: int,
    index: int,
    host_id: int,
    generation: int,
    slots: Sequence[Request | None] | Sequence[Reply | None],
) -> bytes:
    """One whole sector with its checksum. ``slots`` may be shorter than the sector holds."""
    per_sector = slots_per_sector(sector_size)
    if len(slots) > per_sector:
        raise ValueError(f"{len(slots)} slots do not fit in a {sector_size} B sector")
    buf = bytearray(sector_size)
    HEADER.pack_into(buf, 0, kind.value, VERSION, index, host_id, generation, 0)
    for i, slot in enumerate(slots):
        raw = (
            encode_request(slot)  # type: ignore[arg-type]
            if kind is Kind.REQUEST
            else encode_reply(slot)  # type: ignore[arg-type]
        )
        start = HEADER_SIZE + i * SLOT_SIZE
        buf[start : start + SLOT_SIZE] = raw
    seal(buf, CRC_OFFSET)
    return bytes(buf)


def decode_sector(
    data: bytes, kind: Kind, expect_index: int, expect_host: int, slot_count: int | None = None
) -> Sector:
    """Check and decode one sector. ``slot_count`` limits the slots read (the last sector of
    a mailbox holds fewer). Raises CorruptSector for a bad checksum, magic, version or a
    sector that belongs elsewhere (host id or index differ: a layout mismatch)."""
    per_sector = slots_per_sector(len(data))
    count = per_sector if slot_count is None else min(slot_count, per_sector)
    if not any(data):
        return Sector(kind, expect_index, expect_host, 0, (None,) * count)
    magic, version, index, host_id, generation, crc = HEADER.unpack_from(data, 0)
    if magic != kind.value:
        raise CorruptSector(kind.name.lower(), expect_host, expect_index, "bad magic")
    if crc != crc_of(data, CRC_OFFSET):
        raise CorruptSector(kind.name.lower(), expect_host, expect_index, "bad checksum")
    if version != VERSION:
        raise CorruptSector(
            kind.name.lower(), expect_host, expect_index, f"unsupported version {version}"
        )
    if index != expect_index or host_id != expect_host:
        raise CorruptSector(
            kind.name.lower(), expect_host, expect_index,
            f"sector says host {host_id} index {index} (layout mismatch?)",
        )
    if kind is Kind.REQUEST and not 1 <= generation <= HOST_GENERATION_LIMIT:
        raise CorruptSector("request", expect_host, expect_index,
                            f"generation {generation} out of range")
    decode = decode_request if kind is Kind.REQUEST else decode_reply
    slots = tuple(
        decode(data[HEADER_SIZE + i * SLOT_SIZE : HEADER_SIZE + (i + 1) * SLOT_SIZE])
        for i in range(count)
    )
    return Sector(kind, index, host_id, generation, slots)


# Ring sectors.


def head_slots(sector_size: int) -> int:
    """Request slots held by a ring sector."""
    return (sector_size - RING_HEADER_SIZE) // SLOT_SIZE


@dataclass(frozen=True)
class Ring:
    """A host's ring sector. ``count`` goes up by one with every write of it, ``box_seq``
    with every write of the host's other request sectors; ``slots`` are request slots
    ``0..head_slots-1`` (decoded: None, Request or MalformedSlot)."""

    host_id: int
    generation: int
    count: int
    box_seq: int = 0
    slots: tuple[Request | MalformedSlot | None, ...] = ()


def encode_ring(sector_size: int, ring: Ring) -> bytes:
    """One whole ring sector with its checksum (``slots`` may be fewer than it holds)."""
    if not 0 <= ring.count <= MAX_RING_COUNT:
        raise ValueError(f"ring count out of range: {ring.count}")
    if len(ring.slots) > head_slots(sector_size):
        raise ValueError(f"{len(ring.slots)} slots do not fit in a {sector_size} B ring sector")
    buf = bytearray(sector_size)
    HEADER.pack_into(buf, 0, RING_MAGIC, VERSION, 0, ring.host_id, ring.generation, 0)
    RING_BODY.pack_into(buf, HEADER_SIZE, ring.count, ring.box_seq & 0xFFFFFFFF, 0)
    for i, slot in enumerate(ring.slots):
        if isinstance(slot, MalformedSlot):
            raise ValueError("cannot encode a malformed slot")
        start = RING_HEADER_SIZE + i * SLOT_SIZE
        buf[start : start + SLOT_SIZE] = encode_request(slot)
    seal(buf, CRC_OFFSET)
    return bytes(buf)


def decode_ring(data: bytes, expect_host: int) -> Ring:
    """Check and decode a ring sector; an all-zero sector is a host that never rang.

    Raises CorruptSector for a bad checksum, magic, version, host id or reserved field."""
    count_slots = head_slots(len(data))
    if not any(data):
        return Ring(expect_host, 0, 0, 0, (None,) * count_slots)
    magic, version, index, host_id, generation, crc = HEADER.unpack_from(data, 0)
    if magic != RING_MAGIC:
        raise CorruptSector("ring", expect_host, 0, "bad magic")
    if crc != crc_of(data, CRC_OFFSET):
        raise CorruptSector("ring", expect_host, 0, "bad checksum")
    if version != VERSION:
        raise CorruptSector("ring", expect_host, 0, f"unsupported version {version}")
    if index != 0 or host_id != expect_host:
        raise CorruptSector("ring", expect_host, 0,
                            f"sector says host {host_id} index {index} (layout mismatch?)")
    count, box_seq, reserved = RING_BODY.unpack_from(data, HEADER_SIZE)
    if reserved:
        raise CorruptSector("ring", expect_host, 0, "reserved field is not zero")
    if not 1 <= generation <= HOST_GENERATION_LIMIT:
        raise CorruptSector("ring", expect_host, 0, f"generation {generation} out of range")
    slots = tuple(
        decode_request(data[RING_HEADER_SIZE + i * SLOT_SIZE :
                            RING_HEADER_SIZE + (i + 1) * SLOT_SIZE])
        for i in range(count_slots)
    )
    return Ring(host_id, generation, count, box_seq, slots)
