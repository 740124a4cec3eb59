"""Aligned sector I/O on the shared metadata area (used by both ``lease/`` and ``spm/``).

The :class:`SectorStorage` protocol is the boundary. Implementations:

- :func:`open_storage` -> :class:`DirectStorage`: a file or block device opened with
  ``O_RDWR|O_DIRECT|O_DSYNC``; page-aligned ``mmap`` buffers, ``os.preadv``/``os.pwritev``,
  whole sectors only. The blocking call runs in a worker thread (``anyio.to_thread``) under an
  I/O timeout. **A timed-out I/O is abandoned, not cancelled**: its thread keeps running and a
  timed-out write may still land later (Linux cannot reliably cancel I/O). Two rules keep that
  safe for callers: a later write that overlaps an abandoned one waits for it to finish (so a
  late write never overwrites a newer one from the same process), and the file descriptor is
  closed only when the last thread using it is done.
- :class:`MemoryStorage`: a bytearray, for unit tests (one instance shared by several
  "hosts" in one process; each sector write is atomic).
- :class:`FaultyStorage`: wraps any storage and injects seeded, deterministic faults.

Usage::

    storage = await open_storage("/dev/sdb", sector_size=0, io_timeout=10.0)
    try:
        data = await storage.read(0, storage.sector_size)
        await storage.write(0, data)
    finally:
        await storage.close()

Errors: :class:`UnalignedIoError` (offset/length not whole sectors, or past the end),
:class:`IoTimeout` (the I/O did not finish within ``io_timeout``), :class:`StorageError`
(anything the OS reported). All are :class:`~autoextend.errors.AutoextendError`.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio
import anyio.lowlevel

from autoextend.errors import AutoextendError

SECTOR_SIZES = (512, 4096)
BLKSSZGET = 0x1268  # logical sector size of a block device (int)
BLKGETSIZE64 = 0x80081272  # size of a block device in bytes (u64)

_T = TypeVar("_T")


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

    async def close(self) -> None:
        """Close; the descriptor is released once abandoned I/O threads are done with it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._users == 0 and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


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


class MemoryStorage:
    """In-memory sectors for unit tests; share one instance between simulated hosts."""

    def __init__(self, size: int, sector_size: int = 512, path: str = "<memory>") -> None:
        if sector_size not in SECTOR_SIZES or size % sector_size:
            raise ValueError(f"bad geometry: size {size}, sector size {sector_size}")
        self.path = path
        self.sector_size = sector_size
        self.size = size
        self.data = bytearray(size)
        self.stats = IoStats()

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.path, "read", self.sector_size, self.size, offset, length)
        await anyio.lowlevel.checkpoint()
        self.stats.reads += 1
        self.stats.read_bytes += length
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        check_range(self.path, "write", self.sector_size, self.size, offset, len(data))
        await anyio.lowlevel.checkpoint()
        self.data[offset : offset + len(data)] = data
        self.stats.writes += 1
        self.stats.write_bytes += len(data)

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class FaultPlan:
    """Which faults :class:`FaultyStorage` injects, and how often (probabilities per call).

    - ``delay_prob``/``max_delay_s``: wait up to ``max_delay_s`` before the I/O.
    - ``timeout_prob``: the caller waits ``io_timeout`` and gets :class:`IoTimeout`; a write
      then lands ``late`` (up to ``late_write_max_s`` after the caller was told, applied before
      any later overlapping write, like the real storage) or, half of the time, never.
    - ``torn_prob``: a write lands only partly (a byte prefix of its first sector; the rest of
      that sector keeps the old bytes) and the caller gets :class:`StorageError`.
    - ``garbage_prob``: a read returns one sector of random bytes (the disk is intact).
    - ``read_error_prob``: a read fails with :class:`StorageError`.
    """

    seed: int = 0
    delay_prob: float = 0.0
    max_delay_s: float = 0.0
    timeout_prob: float = 0.0
    late_write_max_s: float = 0.0
    torn_prob: float = 0.0
    garbage_prob: float = 0.0
    read_error_prob: float = 0.0


@dataclass
class _LateWrite:
    due: float
    offset: int
    data: bytes


class _Clock(Protocol):
    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


@dataclass
class FaultCounts:
    delays: int = 0
    timeouts: int = 0
    late_writes: int = 0
    lost_writes: int = 0
    torn_writes: int = 0
    garbage_reads: int = 0
    read_errors: int = 0


class FaultyStorage:
    """Wraps a storage and injects the faults of a :class:`FaultPlan` (seeded, deterministic).

    Late writes are kept here and applied on a later call once due (or before a later write
    to the same sectors), so no background task is needed; they die with the process, like
    I/O of a crashed host that never reached the disk.
    """

    def __init__(
        self, inner: SectorStorage, plan: FaultPlan, clock: _Clock, io_timeout: float
    ) -> None:
        self.inner = inner
        self.plan = plan
        self.clock = clock
        self.io_timeout = io_timeout
        self.sector_size = inner.sector_size
        self.size = inner.size
        self.path = getattr(inner, "path", "<faulty>")
        self.counts = FaultCounts()
        self._rng = random.Random(plan.seed)
        self._late: list[_LateWrite] = []

    def _roll(self, probability: float) -> bool:
        return probability > 0.0 and self._rng.random() < probability

    async def _land_due(self, offset: int = -1, end: int = -1) -> None:
        now = self.clock.now()
        keep: list[_LateWrite] = []
        for late in self._late:
            overlaps = late.offset < end and offset < late.offset + len(late.data)
            if late.due <= now or overlaps:
                await self.inner.write(late.offset, late.data)
            else:
                keep.append(late)
        self._late = keep

    async def _prologue(self, op: str, offset: int, length: int) -> None:
        check_range(self.path, op, self.sector_size, self.size, offset, length)
        await self._land_due(*((offset, offset + length) if op == "write" else (-1, -1)))
        if self._roll(self.plan.delay_prob):
            self.counts.delays += 1
            await self.clock.sleep(self._rng.uniform(0.0, self.plan.max_delay_s))

    async def read(self, offset: int, length: int) -> bytes:
        await self._prologue("read", offset, length)
        if self._roll(self.plan.timeout_prob):
            self.counts.timeouts += 1
            await self.clock.sleep(self.io_timeout)
            raise IoTimeout(self.path, "read", offset, length, self.io_timeout)
        if self._roll(self.plan.read_error_prob):
            self.counts.read_errors += 1
            raise StorageError(self.path, "read", offset, length, "I/O error (injected)")
        data = await self.inner.read(offset, length)
        if self._roll(self.plan.garbage_prob):
            self.counts.garbage_reads += 1
            sector = self._rng.randrange(length // self.sector_size) * self.sector_size
            noise = self._rng.randbytes(self.sector_size)
            data = data[:sector] + noise + data[sector + self.sector_size :]
        return data

    async def write(self, offset: int, data: bytes) -> None:
        await self._prologue("write", offset, len(data))
        if self._roll(self.plan.timeout_prob):
            self.counts.timeouts += 1
            await self.clock.sleep(self.io_timeout)
            if self._rng.random() < 0.5:
                self.counts.late_writes += 1
                lateness = self._rng.uniform(0.0, self.plan.late_write_max_s)
                self._late.append(_LateWrite(self.clock.now() + lateness, offset, bytes(data)))
            else:
                self.counts.lost_writes += 1
            raise IoTimeout(self.path, "write", offset, len(data), self.io_timeout)
        if self._roll(self.plan.torn_prob):
            self.counts.torn_writes += 1
            old = await self.inner.read(offset, self.sector_size)
            cut = self._rng.randrange(1, self.sector_size)
            await self.inner.write(offset, data[:cut] + old[cut:])
            raise StorageError(self.path, "write", offset, len(data), "torn write (injected)")
        await self.inner.write(offset, data)

    async def flush_late(self) -> None:
        """Land every pending late write now (tests use it to force the worst ordering)."""
        for late in self._late:
            await self.inner.write(late.offset, late.data)
        self._late = []

    async def close(self) -> None:
        await self.inner.close()


__all__ = [
    "BLKSSZGET",
    "DirectStorage",
    "FaultCounts",
    "FaultPlan",
    "FaultyStorage",
    "IoStats",
    "IoTimeout",
    "MemoryStorage",
    "SectorStorage",
    "StorageError",
    "UnalignedIoError",
    "check_range",
    "open_storage",
]
