"""DirectStorage on real files and loop devices; MemoryStorage; alignment and timeouts."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from autoextend.directio import DirectStorage, open_storage
from autoextend.lab.waiting import until
from autoextend.sectorfakes import MemoryStorage
from autoextend.sectors import IoTimeout, StorageError, UnalignedIoError


@pytest.mark.parametrize("sector", [512, 4096])
async def test_file_round_trip(scratch_file: Path, sector: int) -> None:
    storage = await open_storage(str(scratch_file), sector_size=sector, io_timeout=5.0)
    try:
        assert storage.sector_size == sector
        assert storage.size == 8 << 20
        payload = bytes(range(256)) * (2 * sector // 256)
        await storage.write(3 * sector, payload)
        assert await storage.read(3 * sector, 2 * sector) == payload
        assert await storage.read(0, sector) == bytes(sector)
        assert storage.stats.reads == 2 and storage.stats.writes == 1
    finally:
        await storage.close()
    assert scratch_file.read_bytes()[3 * sector : 5 * sector] == payload  # noqa: ASYNC240


async def test_file_defaults_to_512(scratch_file: Path) -> None:
    storage = await open_storage(str(scratch_file))
    try:
        assert storage.sector_size == 512
    finally:
        await storage.close()


@pytest.mark.parametrize(
    ("offset", "length"), [(1, 512), (0, 100), (256, 512), (0, 0), (-512, 512), (8 << 20, 512)]
)
async def test_unaligned_or_out_of_range_rejected(
    scratch_file: Path, offset: int, length: int
) -> None:
    storage = await open_storage(str(scratch_file), io_timeout=5.0)
    try:
        with pytest.raises(UnalignedIoError):
            await storage.read(offset, length)
        with pytest.raises(UnalignedIoError):
            await storage.write(offset, bytes(max(length, 0)))
    finally:
        await storage.close()


async def test_open_errors_are_storage_errors(scratch_dir: Path) -> None:
    with pytest.raises(StorageError, match="No such file"):
        await open_storage(str(scratch_dir / "missing"))
    with pytest.raises(StorageError, match="sector size"):
        await open_storage(str(scratch_dir / "missing"), sector_size=1024)


@pytest.mark.slow
async def test_loop_device_sector_detected(loop_device: tuple[str, int]) -> None:
    dev, sector = loop_device
    storage = await open_storage(dev, io_timeout=5.0)
    try:
        assert storage.sector_size == sector
        assert storage.size == 8 << 20
        await storage.write(sector, b"\x5a" * sector)
        assert await storage.read(sector, sector) == b"\x5a" * sector
        if sector == 4096:
            with pytest.raises(UnalignedIoError):
                await storage.read(512, 512)
    finally:
        await storage.close()


@pytest.mark.slow
async def test_loop_4k_rejects_configured_512(loop_device: tuple[str, int]) -> None:
    dev, sector = loop_device
    if sector != 4096:
        pytest.skip("only meaningful on a 4 KiB device")
    with pytest.raises(StorageError, match="smaller than the device"):
        await open_storage(dev, sector_size=512)


async def test_timeout_abandons_and_orders_later_write(scratch_file: Path) -> None:
    """A timed-out write keeps running; a later overlapping write waits for it to finish."""
    storage = await open_storage(str(scratch_file), io_timeout=0.2)
    release = threading.Event()
    order: list[str] = []
    try:
        def slow() -> None:
            release.wait(5)
            order.append("late")

        done = threading.Event()
        with pytest.raises(IoTimeout) as info:
            # Private hook: simulate a write stuck in the kernel past the timeout.
            await storage._run("write", 0, 512, slow, done)
        assert info.value.timeout_s == 0.2
        assert len(storage._abandoned) == 1

        async def new_write() -> None:
            await storage.write(0, b"\1" * 512)
            order.append("new")

        async with anyio.create_task_group() as tg:
            tg.start_soon(new_write)
            # time is the subject: a new write that did not wait for the abandoned one would
            # finish within this window, and the final order would show it
            await anyio.sleep(0.05)
            assert order == []
            release.set()
        assert order == ["late", "new"]
    finally:
        release.set()
        await storage.close()


async def test_close_defers_until_abandoned_io_done(scratch_file: Path) -> None:
    storage = await open_storage(str(scratch_file), io_timeout=0.1)
    release = threading.Event()
    with pytest.raises(IoTimeout):
        await storage._run("read", 0, 512, lambda: release.wait(5), threading.Event())
    await storage.close()
    assert storage._fd >= 0  # still open: the abandoned thread holds it
    release.set()
    await until(lambda: storage._fd == -1, 5, "the deferred close",
                describe=lambda: storage._fd)
    with pytest.raises(StorageError, match="closed"):
        await storage.read(0, 512)


async def test_memory_storage() -> None:
    storage = MemoryStorage(8 * 4096, sector_size=4096)
    await storage.write(4096, b"x" * 4096)
    assert await storage.read(4096, 4096) == b"x" * 4096
    with pytest.raises(UnalignedIoError):
        await storage.write(512, b"x" * 512)
    assert isinstance(storage, MemoryStorage) and not isinstance(storage, DirectStorage)
