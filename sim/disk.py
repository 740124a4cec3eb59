"""Simulated shared storage: one byte array all hosts see, and each host's view of it.

- Every sector is atomic; a multi-sector write that is torn (an injected fault, or the
  writer crashing before it landed) leaves each sector old or new.
- Every I/O takes a delay drawn from the seed. A read returns the disk as it was at one
  instant within its delay. A write lands at the end of its delay, even if its host was
  frozen or crashed meanwhile (the I/O is in the kernel, not in the process).
- An I/O slower than ``io_timeout`` fails with IoTimeout after ``io_timeout``, like
  ``DirectStorage``; a timed-out write may land later (a late write). As there, a host's later
  write overlapping its own timed-out one waits for it to land first.
- I/O errors: a read or write fails with StorageError (a failed write lands torn or not at
  all).

No threads, no wall clock: delays are sleeps and ``call_at`` timers on the virtual loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

from autoextend.sectors import IoTimeout, StorageError, check_range

FAST_IO_S = 0.05  # below this an I/O is simulated with one sleep


class Gate(Protocol):
    """The host side of an I/O: whether the process still exists, and its SIGSTOP gate."""

    host_id: int
    alive: bool
    frozen: bool

    async def gate(self) -> None: ...


@dataclass
class DiskFaults:
    """Per-host fault knobs, changed by the driver during fault windows."""

    error_prob: float = 0.0      # an I/O fails
    slow_prob: float = 0.0       # an I/O takes up to slow_max_s (maybe past io_timeout)
    slow_max_s: float = 0.0
    torn_prob: float = 0.0       # a multi-sector write lands torn and fails


@dataclass
class DiskStats:
    reads: int = 0
    writes: int = 0
    late_writes: int = 0
    torn_writes: int = 0
    io_errors: int = 0
    timeouts: int = 0
    crash_torn: int = 0


class SimDisk:
    def __init__(
        self, size: int, sector_size: int, io_timeout: float, rng: random.Random,
        trace: Callable[[str], None],
    ) -> None:
        self.size = size
        self.sector_size = sector_size
        self.io_timeout = io_timeout
        self.data = bytearray(size)
        self.rng = rng
        self.trace = trace
        self.stats = DiskStats()
        self.faults: dict[int, DiskFaults] = {}
        # Called after every write that landed: (host_id, offset, length) (invariant hooks).
        self.on_write: Callable[[int, int, int], None] = lambda host, offset, length: None

    def faults_for(self, host_id: int) -> DiskFaults:
        return self.faults.setdefault(host_id, DiskFaults())

    def delay(self, host_id: int) -> float:
        f = self.faults_for(host_id)
        if f.slow_prob and self.rng.random() < f.slow_prob:
            return self.rng.uniform(0.0, f.slow_max_s)
        return self.rng.uniform(0.0002, 0.01)

    def land(self, host_id: int, offset: int, data: bytes, torn: bool) -> None:
        ss = self.sector_size
        count = len(data) // ss
        if torn and count > 1:
            keep = [self.rng.random() < 0.5 for _ in range(count)]
        else:
            keep = [not torn] * count
        for n, new in enumerate(keep):
            if new:
                self.data[offset + n * ss : offset + (n + 1) * ss] = data[n * ss : (n + 1) * ss]
        self.stats.writes += 1
        mask = "".join("n" if new else "o" for new in keep) if torn else ""
        self.trace(f"h{host_id} land {offset:#x}+{len(data)}{' torn ' + mask if torn else ''}")
        self.on_write(host_id, offset, len(data))


@dataclass
class _Flight:
    offset: int
    end: int
    lands_at: float
    done: anyio.Event


class HostStorage:
    """One host incarnation's view of the disk (implements ``SectorStorage``)."""

    def __init__(self, disk: SimDisk, host: Gate) -> None:
        self.disk = disk
        self.host = host
        self.sector_size = disk.sector_size
        self.size = disk.size
        self.path = f"sim-disk(h{host.host_id})"
        self._late: list[_Flight] = []

    def _fail_if_dead(self, op: str, offset: int, length: int) -> None:
        if not self.host.alive:
            raise StorageError(self.path, op, offset, length, "host crashed")

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.path, "read", self.sector_size, self.size, offset, length)
        await self.host.gate()
        self._fail_if_dead("read", offset, length)
        disk = self.disk
        f = disk.faults_for(self.host.host_id)
        delay = disk.delay(self.host.host_id)
        if f.error_prob and disk.rng.random() < f.error_prob:
            disk.stats.io_errors += 1
            await anyio.sleep(delay * 0.5)
            raise StorageError(self.path, "read", offset, length, "I/O error (simulated)")
        if delay > disk.io_timeout:
            disk.stats.timeouts += 1
            await anyio.sleep(disk.io_timeout)
            raise IoTimeout(self.path, "read", offset, length, disk.io_timeout)
        # The data is the disk's at some instant within the I/O: its start or its end for a
        # fast one (one sleep), any instant for a slow one.
        if delay < FAST_IO_S:
            if disk.rng.random() < 0.5:
                data = bytes(disk.data[offset : offset + length])
                await anyio.sleep(delay)
            else:
                await anyio.sleep(delay)
                data = bytes(disk.data[offset : offset + length])
        else:
            at = disk.rng.uniform(0.0, delay)
            await anyio.sleep(at)
            data = bytes(disk.data[offset : offset + length])
            await anyio.sleep(delay - at)
        disk.stats.reads += 1
        if self.host.frozen:
            await self.host.gate()
        self._fail_if_dead("read", offset, length)
        return data

    async def _wait_late(self, offset: int, end: int) -> None:
        now = anyio.current_time()
        self._late = [f for f in self._late if not f.done.is_set()]
        for flight in self._late:
            if flight.offset < end and offset < flight.end:
                if flight.lands_at - now > self.disk.io_timeout:
                    await anyio.sleep(self.disk.io_timeout)
                    raise IoTimeout(self.path, "write", offset, end - offset,
                                    self.disk.io_timeout)
                await flight.done.wait()

    async def write(self, offset: int, data: bytes) -> None:
        length = len(data)
        check_range(self.path, "write", self.sector_size, self.size, offset, length)
        await self.host.gate()
        self._fail_if_dead("write", offset, length)
        await self._wait_late(offset, offset + length)
        self._fail_if_dead("write", offset, length)
        disk = self.disk
        host_id = self.host.host_id
        f = disk.faults_for(host_id)
        delay = disk.delay(host_id)
        error = bool(f.error_prob) and disk.rng.random() < f.error_prob
        torn = length > self.sector_size and bool(f.torn_prob) and disk.rng.random() < f.torn_prob
        lost = error and disk.rng.random() < 0.5
        flight = _Flight(offset, offset + length, anyio.current_time() + delay, anyio.Event())
        payload = bytes(data)
        host = self.host

        def land() -> None:
            crashed = not host.alive and length > self.sector_size
            if crashed:
                disk.stats.crash_torn += 1
            if not lost:
                disk.land(host_id, offset, payload, torn or error or crashed)
            flight.done.set()

        if not (error or torn) and delay < FAST_IO_S:
            # Fast path (one sleep): the write lands when the sleep ends, or at that instant
            # anyway if the writer is cancelled or crashes meanwhile.
            try:
                await anyio.sleep(delay)
            except BaseException:
                asyncio.get_running_loop().call_at(flight.lands_at, land)
                raise
            land()
        else:
            asyncio.get_running_loop().call_at(flight.lands_at, land)
            if error or torn:
                disk.stats.io_errors += error
                disk.stats.torn_writes += torn
                await flight.done.wait()
                raise StorageError(self.path, "write", offset, length,
                                   "torn write (simulated)" if torn else "I/O error (simulated)")
            if delay > disk.io_timeout:
                disk.stats.timeouts += 1
                disk.stats.late_writes += 1
                self._late.append(flight)
                await anyio.sleep(disk.io_timeout)
                raise IoTimeout(self.path, "write", offset, length, disk.io_timeout)
            await flight.done.wait()
        if host.frozen:
            await host.gate()
        self._fail_if_dead("write", offset, length)

    async def close(self) -> None:
        return None
