"""The sector storage boundary: aligned, whole-sector I/O on the shared metadata area.

Used by both ``lease/`` and ``spm/``. :class:`SectorStorage` is the protocol; the
implementations are :class:`~autoextend.directio.DirectStorage` (``O_DIRECT`` on a file or
block device, production) and, for tests, :class:`~autoextend.sectorfakes.MemoryStorage` and
:class:`~autoextend.sectorfakes.FaultyStorage`. All of them pass
``tests/conformance/test_sector_storage.py``.

Errors: :class:`UnalignedIoError` (offset/length not whole sectors, or past the end),
:class:`IoTimeout` (the I/O did not finish within its timeout), :class:`StorageError`
(anything the OS reported). All are :class:`~autoextend.errors.AutoextendError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autoextend.errors import AutoextendError

SECTOR_SIZES = (512, 4096)

class SectorStorage(Protocol):
    sector_size: int   # 512 or 4096
    size: int          # bytes usable
    path: str          # what it is, for messages: a file or device path, or a fake's label

    async def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; both multiples of ``sector_size``."""
        ...

    async def write(self, offset: int, data: bytes) -> None:
        """Write whole sectors at ``offset`` (durable when it returns: O_DIRECT|O_SYNC)."""
        ...

    async def close(self) -> None: ...


class StorageError(AutoextendError):
    """An I/O on the shared storage failed (the OS reported an error)."""

    def __init__(self, path: str, op: str, offset: int, length: int, reason: str) -> None:
        self.path = path
        self.op = op
        self.offset = offset
        self.length = length
        self.reason = reason
        super().__init__(f"{path}: {op} of {length} bytes at offset {offset} failed: {reason}")


class UnalignedIoError(StorageError):
    """Offset or length is not a whole number of sectors, or the range is outside the storage."""


class IoTimeout(StorageError):
    """The I/O did not complete within ``timeout_s``. For a write: it may still land later."""

    def __init__(self, path: str, op: str, offset: int, length: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(path, op, offset, length, f"timed out after {timeout_s:g}s")


def check_range(
    path: str, op: str, sector_size: int, size: int, offset: int, length: int
) -> None:
    """Raise UnalignedIoError unless ``[offset, offset+length)`` is whole sectors inside size."""
    if offset < 0 or length <= 0 or offset % sector_size or length % sector_size:
        raise UnalignedIoError(
            path, op, offset, length, f"not whole {sector_size}-byte sectors"
        )
    if offset + length > size:
        raise UnalignedIoError(path, op, offset, length, f"past the end ({size} bytes)")


@dataclass
class IoStats:
    """Counters of completed I/O calls (each read or write call counts once)."""

    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    timeouts: int = 0
    errors: int = 0
