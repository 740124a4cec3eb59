"""The current size of a block device, read from its path in a worker thread.

QEMU 7.2 caches a ``host_device`` node's length: after the device grew (``lvextend`` +
refresh, or ``losetup -c``), ``query-named-block-nodes`` still reports the old size until
something makes QEMU re-read it. The physical size is therefore read here with
``lseek(SEEK_END)``, which asks the kernel for the device's size now.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio


def _size_now(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _size_or_none(path: str) -> int | None:
    try:
        size = _size_now(path)
    except (OSError, ValueError):
        return None
    return size if 0 <= size < (1 << 63) else None


async def device_sizes(paths: Sequence[str]) -> list[int | None]:
    """The size of each of ``paths`` in bytes, in one worker-thread hop (a VM's drives at
    once: the full poll of a thousand drives is then one hop per VM, not per drive); None
    for a path that cannot be opened here (or is not one: a NUL byte) or whose size is
    not one a volume can have."""
    if not paths:
        return []
    return await anyio.to_thread.run_sync(lambda: [_size_or_none(p) for p in paths])
