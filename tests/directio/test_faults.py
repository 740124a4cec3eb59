"""FaultyStorage: every fault kind, determinism by seed, late writes ordering."""

from __future__ import annotations

import pytest

from autoextend.clock import MonotonicClock
from autoextend.sectorfakes import FaultPlan, FaultyStorage, MemoryStorage
from autoextend.sectors import IoTimeout, StorageError

SECTOR = 512


def make(plan: FaultPlan, io_timeout: float = 0.01) -> tuple[MemoryStorage, FaultyStorage]:
    inner = MemoryStorage(16 * SECTOR)
    return inner, FaultyStorage(inner, plan, MonotonicClock(), io_timeout)


async def test_no_faults_is_transparent() -> None:
    inner, faulty = make(FaultPlan())
    await faulty.write(SECTOR, b"a" * SECTOR)
    assert await faulty.read(SECTOR, SECTOR) == b"a" * SECTOR
    assert inner.data[SECTOR : 2 * SECTOR] == b"a" * SECTOR


async def test_timeout_then_late_or_lost_write() -> None:
    seen = {"late": 0, "lost": 0}
    for seed in range(20):
        inner, faulty = make(FaultPlan(seed=seed, timeout_prob=1.0, late_write_max_s=0.0))
        with pytest.raises(IoTimeout):
            await faulty.write(0, b"L" * SECTOR)
        assert inner.data[:SECTOR] == bytes(SECTOR)  # not landed when the caller is told
        await faulty.flush_late()
        if inner.data[:SECTOR] == b"L" * SECTOR:
            seen["late"] += 1
        else:
            seen["lost"] += 1
        assert faulty.counts.late_writes + faulty.counts.lost_writes == 1
    assert seen["late"] > 0 and seen["lost"] > 0


async def test_late_write_lands_before_later_overlapping_write() -> None:
    for seed in range(20):
        inner, faulty = make(FaultPlan(seed=seed, timeout_prob=1.0, late_write_max_s=100.0))
        with pytest.raises(IoTimeout):
            await faulty.write(0, b"O" * SECTOR)
        faulty.plan = FaultPlan()
        faulty._rng.seed(seed)
        await faulty.write(0, b"N" * SECTOR)
        assert inner.data[:SECTOR] == b"N" * SECTOR  # the old write never overwrites the new


async def test_torn_write_mixes_old_and_new() -> None:
    inner, faulty = make(FaultPlan(seed=3, torn_prob=1.0))
    inner.data[:SECTOR] = b"o" * SECTOR
    with pytest.raises(StorageError, match="torn"):
        await faulty.write(0, b"n" * SECTOR)
    sector = bytes(inner.data[:SECTOR])
    assert sector.startswith(b"n") and sector.endswith(b"o")
    assert faulty.counts.torn_writes == 1


async def test_garbage_read_leaves_disk_intact() -> None:
    inner, faulty = make(FaultPlan(seed=1, garbage_prob=1.0))
    inner.data[:] = b"z" * len(inner.data)
    data = await faulty.read(0, 4 * SECTOR)
    assert data != b"z" * 4 * SECTOR and len(data) == 4 * SECTOR
    assert inner.data == b"z" * len(inner.data)


async def test_read_error() -> None:
    _, faulty = make(FaultPlan(read_error_prob=1.0))
    with pytest.raises(StorageError, match="injected"):
        await faulty.read(0, SECTOR)


async def test_same_seed_same_faults() -> None:
    async def run(seed: int) -> list[str]:
        _, faulty = make(FaultPlan(seed=seed, read_error_prob=0.3, garbage_prob=0.3))
        out = []
        for _ in range(30):
            try:
                out.append((await faulty.read(0, SECTOR)).hex()[:8])
            except StorageError:
                out.append("err")
        return out

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)
