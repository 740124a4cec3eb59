"""Aligned sector I/O on the shared metadata area (used by both ``lease/`` and ``spm/``).

The :class:`SectorStorage` protocol is the boundary; implementations: an O_DIRECT file or
block device (blocking I/O in worker threads, with a timeout), an in-memory one for unit tests,
and a fault-injecting wrapper.
"""

from __future__ import annotations

from typing import Protocol


class SectorStorage(Protocol):
    sector_size: int   # 512 or 4096
    size: int          # bytes usable

    async def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; both multiples of ``sector_size``."""
        ...

    async def write(self, offset: int, data: bytes) -> None:
        """Write whole sectors at ``offset`` (durable when it returns: O_DIRECT|O_SYNC)."""
        ...

    async def close(self) -> None: ...
