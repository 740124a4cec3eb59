"""The storage-health probe that gates a resume after an I/O-error pause.

One O_DIRECT read of the first 4 KiB (a whole sector for 512 B and 4 KiB devices) of the
device or file under each drive in error, in a worker thread, bounded by a timeout. The page
cache cannot answer an O_DIRECT read, so a success means the storage answered just now.
A path that is not a local file or device (for example an NBD URI) cannot be probed and
counts as a failure: such a VM is left paused rather than resumed blindly.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Awaitable, Callable, Iterable

import anyio

from autoextend.logs import get_logger

log = get_logger("monitor")

PROBE_BYTES = 4096

StorageProbe = Callable[[str], Awaitable[bool]]


def read_first_sector(path: str) -> None:
    """Blocking: raise OSError unless one O_DIRECT read at offset 0 succeeds."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        buf = mmap.mmap(-1, PROBE_BYTES)  # page-aligned, as O_DIRECT requires
        try:
            os.preadv(fd, [buf], 0)
        finally:
            buf.close()
    finally:
        os.close(fd)


def direct_read_probe(timeout_s: float) -> StorageProbe:
    """A probe that reads ``path`` with O_DIRECT in a worker thread, within ``timeout_s``."""

    async def probe(path: str) -> bool:
        if not os.path.isabs(path):
            log.debug("storage probe: not a local path", path=path)
            return False
        with anyio.move_on_after(timeout_s):
            try:
                await anyio.to_thread.run_sync(read_first_sector, path, abandon_on_cancel=True)
            except OSError as exc:
                log.debug("storage probe failed", path=path, error=str(exc))
                return False
            return True
        log.debug("storage probe timed out", path=path, timeout_s=timeout_s)
        return False

    return probe


async def probe_all(probe: StorageProbe, paths: Iterable[str]) -> bool:
    """True when every path answers (and there is at least one)."""
    found = False
    for path in sorted(set(paths)):
        found = True
        if not await probe(path):
            return False
    return found
