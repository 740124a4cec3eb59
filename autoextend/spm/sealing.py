"""The checksum the SPM's mailbox-area records carry in a field of their own (pure).

A record's CRC-32 (``zlib.crc32``) covers its bytes from the start to ``end`` with its own
4-byte field read as zeros, so a writer can pack every field, then the checksum, and a
reader can check a record in place without copying it. The record modules say where their
field is and where the checksummed bytes end (``summary.py``: its 512-byte record;
``intent.py`` and ``inuse.py``: their used length; ``wire.py``: the whole sector).
"""

from __future__ import annotations

import struct
import zlib

_FIELD = struct.Struct("<I")
_ZERO = bytes(_FIELD.size)


def crc_of(buf: bytes | bytearray, field_at: int, end: int | None = None) -> int:
    """CRC-32 of ``buf[:end]`` with the 4 bytes at ``field_at`` read as zeros."""
    crc = zlib.crc32(buf[:field_at])
    crc = zlib.crc32(_ZERO, crc)
    return zlib.crc32(buf[field_at + _FIELD.size:end], crc)


def seal(buf: bytearray, field_at: int, end: int | None = None) -> None:
    """Write the checksum of ``buf[:end]`` into its field at ``field_at``."""
    _FIELD.pack_into(buf, field_at, crc_of(buf, field_at, end))

