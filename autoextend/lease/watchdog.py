"""The watchdog hook: told when this host's SPM term could expire, so something outside the
process can stop the host if the process does not stop itself in time.

``update(expiry)`` is called when a term starts, after every renewal while it lasts, and with
``None`` once the term's work has stopped. Implementations must be cheap and never block.

- :class:`NullWatchdog`: nothing outside enforces the deadline (the default).
- :class:`DeadlineFileWatchdog`: writes the deadline (CLOCK_MONOTONIC seconds, 0 = none) into
  a slot of a shared file; a supervisor (the torture test's parent) kills the process once it
  is past. A hardware ``/dev/watchdog`` would be petted only while now < expiry and armed with
  a timeout <= W; see README ("Watchdog").
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Protocol

SLOT = struct.Struct("<d")


class Watchdog(Protocol):
    def update(self, expiry: float | None) -> None: ...


class NullWatchdog:
    def update(self, expiry: float | None) -> None:
        return None


class DeadlineFileWatchdog:
    """Slot ``index`` (8 bytes) of a shared file holds this process's deadline."""

    def __init__(self, path: str, index: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self._offset = index * SLOT.size

    def update(self, expiry: float | None) -> None:
        SLOT.pack_into(self._map, self._offset, expiry or 0.0)

    def close(self) -> None:
        self._map.close()


def read_deadlines(path: str, count: int) -> list[float]:
    with open(path, "rb") as f:
        data = f.read(count * SLOT.size)
    return [SLOT.unpack_from(data, i * SLOT.size)[0] for i in range(count)]
