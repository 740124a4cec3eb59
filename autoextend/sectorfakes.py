"""In-memory and fault-injecting :class:`~autoextend.sectors.SectorStorage`, for tests.

- :class:`MemoryStorage`: a bytearray (one instance shared by several "hosts" in one process;
  each sector write is atomic).
- :class:`FaultyStorage`: wraps any storage and injects seeded, deterministic faults
  (:class:`FaultPlan`), with time taken from an injected :class:`~autoextend.clock.Clock`.

Both pass the same conformance suite as the ``O_DIRECT`` storage
(``tests/conformance/test_sector_storage.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import anyio.lowlevel

from autoextend.clock import Clock
from autoextend.sectors import (
    SECTOR_SIZES,
    IoStats,
    IoTimeout,
    SectorStorage,
    StorageError,
    check_range,
)


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
        self.closed = False

    def _check_open(self, op: str, offset: int, length: int) -> None:
        if self.closed:
            raise StorageError(self.path, op, offset, length, "storage is closed")

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.path, "read", self.sector_size, self.size, offset, length)
        await anyio.lowlevel.checkpoint()
        self._check_open("read", offset, length)
        self.stats.reads += 1
        self.stats.read_bytes += length
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        check_range(self.path, "write", self.sector_size, self.size, offset, len(data))
        await anyio.lowlevel.checkpoint()
        self._check_open("write", offset, len(data))
        self.data[offset : offset + len(data)] = data
        self.stats.writes += 1
        self.stats.write_bytes += len(data)

    async def close(self) -> None:
        """Later I/O fails with StorageError, as on a closed DirectStorage (idempotent)."""
        self.closed = True


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
        self, inner: SectorStorage, plan: FaultPlan, clock: Clock, io_timeout: float
    ) -> None:
        self.inner = inner
        self.plan = plan
        self.clock = clock
        self.io_timeout = io_timeout
        self.sector_size = inner.sector_size
        self.size = inner.size
        self.path = inner.path
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


__all__ = ["FaultCounts", "FaultPlan", "FaultyStorage", "MemoryStorage"]
