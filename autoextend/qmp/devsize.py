"""The current size of a block device, read from its path in a worker thread.

QEMU 7.2 caches a ``host_device`` node's length: after the device grew (``lvextend`` +
refresh, or ``losetup -c``), ``query-named-block-nodes`` still reports the old size until
something makes QEMU re-read it. The physical size is therefore read here with
``lseek(SEEK_END)``, which asks the kernel for the device's size now.
"""

from __future__ import annotations

import os

import anyio


def _size_now(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


async def device_size(path: str) -> int | None:
    """The size of ``path`` in bytes, or None when it cannot be opened here (or the path is
    not one: a NUL byte) or the size is not one a volume can have."""
    try:
        size = await anyio.to_thread.run_sync(_size_now, path)
    except (OSError, ValueError):
        return None
    return size if 0 <= size < (1 << 63) else None
