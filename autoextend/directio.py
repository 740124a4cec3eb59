"""Aligned sector I/O with ``O_DIRECT``: the production :class:`~autoextend.sectors.SectorStorage`.

:func:`open_storage` -> :class:`DirectStorage`: a file or block device opened with
``O_RDWR|O_DIRECT|O_DSYNC``; page-aligned ``mmap`` buffers, ``os.preadv``/``os.pwritev``,
whole sectors only. The blocking call runs in a worker thread (``anyio.to_thread``) under an
I/O timeout. **A timed-out I/O is abandoned, not cancelled**: its thread keeps running and a
timed-out write may still land later (Linux cannot reliably cancel I/O). Two rules keep that
safe for callers: a later write that overlaps an abandoned one waits for it to finish (so a
late write never overwrites a newer one from the same process), and the file descriptor is
closed only when the last thread using it is done.

Usage::

    storage = await open_storage("/dev/sdb", sector_size=0, io_timeout=10.0)
    try:
        data = await storage.read(0, storage.sector_size)
        await storage.write(0, data)
    finally:
        await storage.close()

Errors are those of :mod:`autoextend.sectors` (``UnalignedIoError``, ``IoTimeout``,
``StorageError``).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from autoextend.sectors import (
    SECTOR_SIZES,
    IoStats,
    IoTimeout,
    StorageError,
    check_range,
)

BLKSSZGET = 0x1268  # logical sector size of a block device (int)
BLKGETSIZE64 = 0x80081272  # size of a block device in bytes (u64)

_T = TypeVar("_T")


@dataclass
class _Abandoned:
    offset: int
    end: int
    done: threading.Event = field(default_factory=threading.Event)


class DirectStorage:
    """A file or block device opened with O_DIRECT|O_DSYNC. Create with :func:`open_storage`."""

    def __init__(self, path: str, fd: int, sector_size: int, size: int, io_timeout: float) -> None:
        self.path = path
        self.sector_size = sector_size
        self.size = size
        self.io_timeout = io_timeout
        self.stats = IoStats()
        self._fd = fd
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False
        self._abandoned: list[_Abandoned] = []

    def _enter(self, op: str, offset: int, length: int) -> None:
        with self._lock:
            if self._closed:
                raise StorageError(self.path, op, offset, length, "storage is closed")
            self._users += 1

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._closed and self._users == 0 and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    async def _run(
        self, op: str, offset: int, length: int, fn: Callable[[], _T], done: threading.Event
    ) -> _T:
        """Run ``fn`` in a worker thread; on timeout abandon it (it keeps running)."""
        self._enter(op, offset, length)

        def job() -> _T:
            try:
                return fn()
            finally:
                done.set()
                self._leave()

        try:
            with anyio.fail_after(self.io_timeout):
                return await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
        except TimeoutError:
            self.stats.timeouts += 1
            if op == "write":
                self._abandoned.append(_Abandoned(offset, offset + length, done))
            raise IoTimeout(self.path, op, offset, length, self.io_timeout) from None
        except OSError as err:
            self.stats.errors += 1
            raise StorageError(self.path, op, offset, length, err.strerror or str(err)) from err

    async def _wait_abandoned(self, offset: int, end: int) -> None:
        """Let an earlier timed-out write to the same sectors finish before a new one."""
        self._abandoned = [a for a in self._abandoned if not a.done.is_set()]
        for item in self._abandoned:
            if item.offset < end and offset < item.end:
                finished = await anyio.to_thread.run_sync(
                    item.done.wait, self.io_timeout, abandon_on_cancel=True
                )
                if not finished:
                    raise IoTimeout(self.path, "write", offset, end - offset, self.io_timeout)

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.path, "read", self.sector_size, self.size, offset, length)
        fd = self._fd

        def do_read() -> bytes:
            with mmap.mmap(-1, length) as buf:
                got = os.preadv(fd, [buf], offset)
                if got != length:
                    raise OSError(0, f"short read ({got} of {length} bytes)")
                return bytes(buf)

        data = await self._run("read", offset, length, do_read, threading.Event())
        self.stats.reads += 1
        self.stats.read_bytes += length
        return data

    async def write(self, offset: int, data: bytes) -> None:
        length = len(data)
        check_range(self.path, "write", self.sector_size, self.size, offset, length)
        await self._wait_abandoned(offset, offset + length)
        fd = self._fd

        def do_write() -> None:
            with mmap.mmap(-1, length) as buf:
                buf[:] = data
                done = os.pwritev(fd, [buf], offset)
                if done != length:
                    raise OSError(0, f"short write ({done} of {length} bytes)")

        await self._run("write", offset, length, do_write, threading.Event())
        self.stats.writes += 1
        self.stats.write_bytes += length

    def open_reader(self) -> DirectReader:
        """A blocking reader on a descriptor of its own, for one long-lived thread (the SPM's
        ring peeker, ``spm/peek.py``). Call it in that thread: the open may block."""
        return DirectReader(self.path, self.sector_size, self.size)

    async def close(self) -> None:
        """Close; the descriptor is released once abandoned I/O threads are done with it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._users == 0 and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class DirectReader:
    """Blocking, read-only O_DIRECT reads on a descriptor of its own, into one reused
    page-aligned buffer: for a thread that reads on its own cadence (no worker-thread hop, no
    event-loop wake per read). No timeout: a read that hangs holds only its own thread. Not
    thread-safe: one thread uses it, and closes it."""

    def __init__(self, path: str, sector_size: int, size: int) -> None:
        self.path = path
        self.sector_size = sector_size
        self.size = size
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        self._buf = mmap.mmap(-1, max(sector_size, mmap.PAGESIZE))

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (whole sectors).

        Raises:
            UnalignedIoError: not whole sectors, or past the end.
            StorageError: the OS reported an error, or the reader is closed.
        """
        check_range(self.path, "read", self.sector_size, self.size, offset, length)
        if self._fd < 0:
            raise StorageError(self.path, "read", offset, length, "reader is closed")
        if len(self._buf) < length:
            self._buf.close()
            self._buf = mmap.mmap(-1, length)
        view = memoryview(self._buf)[:length]
        try:
            got = os.preadv(self._fd, [view], offset)
            if got != length:
                raise StorageError(self.path, "read", offset, length,
                                   f"short read ({got} of {length} bytes)")
            return bytes(view)
        except OSError as err:
            raise StorageError(self.path, "read", offset, length,
                               err.strerror or str(err)) from err
        finally:
            view.release()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._buf.close()


def _open_blocking(path: str, sector_size: int) -> tuple[int, int, int]:
    flags = os.O_RDWR | os.O_DIRECT | os.O_DSYNC | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            logical = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
            size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
            if sector_size == 0:
                sector_size = logical
            elif sector_size < logical:
                raise ValueError(
                    f"configured sector size {sector_size} is smaller than the device's "
                    f"logical sector size {logical}"
                )
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
            sector_size = sector_size or 512
        else:
            raise ValueError("not a regular file or block device")
        if sector_size not in SECTOR_SIZES:
            raise ValueError(f"unsupported sector size {sector_size} (use 512 or 4096)")
        return fd, sector_size, size - size % sector_size
    except BaseException:
        os.close(fd)
        raise


async def open_storage(path: str, sector_size: int = 0, io_timeout: float = 10.0) -> DirectStorage:
    """Open a file or block device for aligned direct I/O.

    ``sector_size=0`` detects it: BLKSSZGET on a block device, 512 for a regular file.
    A configured size (512 or 4096) smaller than a device's logical sector size is rejected.

    Raises:
        StorageError: cannot open (missing, no O_DIRECT support e.g. tmpfs, wrong sector size),
        IoTimeout: the open itself did not finish within ``io_timeout``.
    """
    if sector_size not in (0, *SECTOR_SIZES):
        raise StorageError(path, "open", 0, 0, f"unsupported sector size {sector_size}")
    try:
        with anyio.fail_after(io_timeout):
            fd, sector, size = await anyio.to_thread.run_sync(
                _open_blocking, path, sector_size, abandon_on_cancel=True
            )
    except TimeoutError:
        raise IoTimeout(path, "open", 0, 0, io_timeout) from None
    except OSError as err:
        raise StorageError(path, "open", 0, 0, err.strerror or str(err)) from err
    except ValueError as err:
        raise StorageError(path, "open", 0, 0, str(err)) from err
    return DirectStorage(path, fd, sector, size, io_timeout)


__all__ = ["BLKSSZGET", "DirectReader", "DirectStorage", "open_storage"]
