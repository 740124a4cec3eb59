"""Every SectorStorage the conformance suite runs: the ``O_DIRECT`` file storage (512 B and
4 KiB sectors, a scratch file under /var/tmp since tmpfs has no O_DIRECT; marked ``slow``),
the in-memory fake, and the fault-injecting wrapper with a plan that only delays (every I/O
waits a little, then behaves)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from autoextend.clock import MonotonicClock
from autoextend.directio import open_storage
from autoextend.sectorfakes import FaultPlan, FaultyStorage, MemoryStorage
from autoextend.sectors import SectorStorage

SIZE = 1 << 20


@contextlib.asynccontextmanager
async def direct_storage(sector: int) -> AsyncIterator[SectorStorage]:
    with tempfile.TemporaryDirectory(prefix="autoextend-conformance-", dir="/var/tmp") as tmp:
        path = Path(tmp) / "area.img"
        with open(path, "wb") as file:  # noqa: ASYNC230 - a local scratch file, set up once
            file.truncate(SIZE)
        storage = await open_storage(str(path), sector_size=sector, io_timeout=30.0)
        try:
            yield storage
        finally:
            await storage.close()


@contextlib.asynccontextmanager
async def memory_storage(sector: int) -> AsyncIterator[SectorStorage]:
    storage = MemoryStorage(SIZE, sector)
    try:
        yield storage
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def delaying_storage(sector: int) -> AsyncIterator[SectorStorage]:
    plan = FaultPlan(seed=17, delay_prob=0.5, max_delay_s=0.002)
    storage = FaultyStorage(MemoryStorage(SIZE, sector), plan, MonotonicClock(), io_timeout=30.0)
    try:
        yield storage
    finally:
        await storage.close()


SUBJECTS: dict[str, Callable[[int], contextlib.AbstractAsyncContextManager[SectorStorage]]] = {
    "memory": memory_storage,
    "faulty": delaying_storage,
    "direct": direct_storage,
}


@pytest.fixture(params=[
    pytest.param((kind, sector), id=f"{kind}-{sector}",
                 marks=[pytest.mark.slow] if kind == "direct" else [])
    for kind in SUBJECTS for sector in (512, 4096)
])
async def sector_storage(request: pytest.FixtureRequest) -> AsyncIterator[SectorStorage]:
    kind, sector = request.param
    async with SUBJECTS[kind](sector) as storage:
        yield storage
