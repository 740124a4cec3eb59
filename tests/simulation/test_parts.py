"""The simulation's own parts: the virtual-time loop and the simulated disk."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest

from autoextend.sectors import IoTimeout, StorageError
from sim import vloop
from sim.disk import HostStorage, SimDisk

SS = 512


class _Host:
    def __init__(self, host_id: int = 1) -> None:
        self.host_id = host_id
        self.alive = True
        self.frozen = False

    async def gate(self) -> None:
        return None


def _disk(seed: int = 1, io_timeout: float = 10.0) -> tuple[SimDisk, list[str]]:
    lines: list[str] = []
    return SimDisk(8 * SS, SS, io_timeout, random.Random(seed), lines.append), lines


def test_time_jumps_to_the_next_timer() -> None:
    seen: list[float] = []

    async def main() -> None:
        start = anyio.current_time()
        await anyio.sleep(3600.0)  # virtual time is the subject (the simulated clock)
        seen.append(anyio.current_time() - start)
        with anyio.move_on_after(86_400.0 * 365):
            await anyio.Event().wait()
        seen.append(anyio.current_time() - start)
        with pytest.raises(TimeoutError):
            with anyio.fail_after(5.0):
                await anyio.sleep(10.0)  # virtual time: cut short by fail_after
        seen.append(anyio.current_time() - start)

    vloop.run(main)
    assert seen == [3600.0, 3600.0 + 86_400.0 * 365, 3605.0 + 86_400.0 * 365]


def test_deadlock_and_livelock_are_reported() -> None:
    async def stuck() -> None:
        await anyio.Event().wait()

    with pytest.raises(vloop.Deadlock):
        vloop.run(stuck)

    async def spin() -> None:
        while True:
            await anyio.lowlevel.checkpoint()

    with pytest.raises(vloop.Livelock):
        vloop.run(spin)


def test_a_torn_write_leaves_each_sector_old_or_new() -> None:
    disk, _ = _disk()
    disk.faults_for(1).torn_prob = 1.0
    storage = HostStorage(disk, _Host())
    outcomes: set[tuple[bool, ...]] = set()

    async def main() -> None:
        for n in range(64):
            old = bytes(disk.data[: 4 * SS])
            new = bytes([n % 251 + 1]) * (4 * SS)
            with pytest.raises(StorageError):
                await storage.write(0, new)
            after = bytes(disk.data[: 4 * SS])
            sectors = []
            for i in range(4):
                part = after[i * SS : (i + 1) * SS]
                assert part in (old[i * SS : (i + 1) * SS], new[i * SS : (i + 1) * SS])
                sectors.append(part == new[i * SS : (i + 1) * SS])
            outcomes.add(tuple(sectors))

    vloop.run(main)
    assert len(outcomes) > 4  # mixed results, not all-or-nothing


def test_a_timed_out_write_lands_later_and_a_crashed_hosts_write_still_lands() -> None:
    disk, lines = _disk(io_timeout=1.0)
    host = _Host()
    storage = HostStorage(disk, host)
    disk.faults_for(1).slow_prob = 1.0
    disk.faults_for(1).slow_max_s = 1000.0  # nearly every write is far past the timeout
    landed: list[float] = []
    disk.on_write = lambda h, offset, length: landed.append(anyio.current_time())

    async def main() -> None:
        start = anyio.current_time()
        while True:
            try:
                await storage.write(SS, b"x" * SS)
            except IoTimeout:
                break
        told = anyio.current_time() - start
        assert disk.data[SS : 2 * SS] != b"x" * SS  # not yet
        host.alive = False  # crashed: its write in flight lands anyway
        await anyio.sleep(2000.0)  # virtual time: the crashed host's write lands meanwhile
        assert disk.data[SS : 2 * SS] == b"x" * SS
        assert landed[-1] - start > told
        with pytest.raises(StorageError):
            await storage.read(0, SS)

    vloop.run(main)
    assert any("land" in line for line in lines)
