"""The SPM's intent record: the shrinking ops in flight, which every host reads before it lets
a guest open a volume (issue 27, item 1: the last window of the in-use gate).

One ``RECORD_BYTES`` record after the summary records (``layout.py: intent_offset``), written
only by the SPM (a new SPM writes it empty when its mail server starts, then whole, from its
own set, at every change; a fenced SPM writes nothing). It lists every REDUCE (and, later,
REMOVE) the SPM has between "about to take the in-use records' second look" and "the op is
done".

Record (little-endian), written as its used prefix rounded up to whole sectors::

    0   4s   magic      "AXIN"
    4   u8   version    1
    5   u8   reserved   0
    6   u16  count      entries that follow (0..MAX_INTENTS)
    8   u32  crc32      of bytes 0..16+16*count with this field zero
    12  u32  reserved   0
    16  entries[count], 16 bytes each, ascending by (hash, host, request id):
        0   u64  volume hash   ``inuse.volume_hash("vg/lv")``
        8   u8   op            the wire op (REDUCE today)
        9   u8   reserved      0
        10  u16  host          the host that asked
        12  u32  request id    its mailbox request id

An all-zero header is "no intent" (a never-written record). Anything else that does not check
out is corrupt: a host then treats *every* volume as named (it cannot tell), so opens wait
until the SPM writes the record again. The protocol and its argument are in ``inusegate.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from autoextend.spm.errors import CorruptSector
from autoextend.spm.inuse import volume_hash
from autoextend.spm.sealing import crc_of, seal

MAGIC = b"AXIN"
VERSION = 1
RECORD_BYTES = 4096
HEAD = struct.Struct("<4sBBHII")
ENTRY = struct.Struct("<QBxHI")
CRC_OFFSET = 8
MAX_INTENTS = (RECORD_BYTES - HEAD.size) // ENTRY.size  # 255

assert HEAD.size == 16 and ENTRY.size == 16 and MAX_INTENTS == 255


@dataclass(frozen=True, order=True)
class Intent:
    volume_hash: int
    host: int
    request_id: int
    op: int

    def text(self) -> str:
        return f"request {self.request_id} of host {self.host}"


def intent(name: str, op: int, host: int, request_id: int) -> Intent:
    """The intent of ``op`` on ``vg/lv`` ``name`` asked by ``host``'s ``request_id``."""
    return Intent(volume_hash(name), host, request_id, op)


def names(intents: Iterable[Intent], name: str) -> Intent | None:
    """The first intent naming ``name``, or None."""
    h = volume_hash(name)
    return next((i for i in sorted(intents) if i.volume_hash == h), None)


def encode(intents: Iterable[Intent], sector_size: int) -> bytes:
    """The record of ``intents`` as whole sectors (raises ValueError past MAX_INTENTS or on a
    field out of range)."""
    items = sorted(set(intents))
    if len(items) > MAX_INTENTS:
        raise ValueError(f"{len(items)} intents do not fit (at most {MAX_INTENTS})")
    length = HEAD.size + ENTRY.size * len(items)
    buf = bytearray(-(-length // sector_size) * sector_size)
    HEAD.pack_into(buf, 0, MAGIC, VERSION, 0, len(items), 0, 0)
    for k, i in enumerate(items):
        if not (0 <= i.volume_hash < 1 << 64 and 0 <= i.op <= 0xFF
                and 1 <= i.host <= 0xFFFF and 1 <= i.request_id < 1 << 32):
            raise ValueError(f"intent field out of range: {i}")
        ENTRY.pack_into(buf, HEAD.size + k * ENTRY.size, i.volume_hash, i.op, i.host,
                        i.request_id)
    seal(buf, CRC_OFFSET, length)
    return bytes(buf)


def _corrupt(reason: str) -> CorruptSector:
    return CorruptSector("intent", 0, 0, reason)


def decode(data: bytes) -> frozenset[Intent]:
    """Check and decode the record (an all-zero header: no intent). Raises CorruptSector."""
    if len(data) < HEAD.size:
        raise _corrupt("shorter than its header")
    if not any(data[: HEAD.size]):
        return frozenset()
    magic, version, reserved, count, crc, reserved2 = HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise _corrupt("bad magic")
    if count > MAX_INTENTS:
        raise _corrupt(f"count {count} > {MAX_INTENTS}")
    length = HEAD.size + ENTRY.size * count
    if len(data) < length:
        raise _corrupt("shorter than its count says")
    if crc != crc_of(data, CRC_OFFSET, length):
        raise _corrupt("bad checksum")
    if version != VERSION:
        raise _corrupt(f"unsupported version {version}")
    if reserved or reserved2:
        raise _corrupt("reserved field not zero")
    out: list[Intent] = []
    for k in range(count):
        h, op, host, rid = ENTRY.unpack_from(data, HEAD.size + k * ENTRY.size)
        if data[HEAD.size + k * ENTRY.size + 9] or host == 0 or rid == 0:
            raise _corrupt(f"entry {k} out of range")
        out.append(Intent(h, host, rid, op))
    if out != sorted(out) or len(set(out)) != len(out):
        raise _corrupt("entries not strictly ascending")
    return frozenset(out)
