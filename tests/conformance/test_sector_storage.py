"""One contract for every SectorStorage: the O_DIRECT file storage, the in-memory fake and
the fault-injecting wrapper (with a plan that only delays), at 512 B and 4 KiB sectors."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from autoextend.sectors import SECTOR_SIZES, SectorStorage, StorageError, UnalignedIoError
from tests.conformance.sector_subjects import SIZE


def _pattern(seed: int, length: int) -> bytes:
    return bytes((seed + index * 7) % 251 for index in range(length))


async def test_geometry(sector_storage: SectorStorage) -> None:
    s = sector_storage
    assert s.sector_size in SECTOR_SIZES
    assert s.size == SIZE and s.size % s.sector_size == 0


async def test_path_names_the_storage_in_its_errors(sector_storage: SectorStorage) -> None:
    """``path`` says what the storage is (lease and mailbox messages use it); its own errors
    carry the same name."""
    s = sector_storage
    assert isinstance(s.path, str) and s.path.strip() and s.path.isprintable()
    with pytest.raises(UnalignedIoError) as past:
        await s.read(s.size, s.sector_size)
    assert past.value.path == s.path and str(past.value).startswith(f"{s.path}: ")
    await s.close()
    with pytest.raises(StorageError) as closed:
        await s.write(0, bytes(s.sector_size))
    assert closed.value.path == s.path


async def test_fresh_sectors_read_as_zeros(sector_storage: SectorStorage) -> None:
    s = sector_storage
    assert await s.read(0, 2 * s.sector_size) == bytes(2 * s.sector_size)
    assert await s.read(s.size - s.sector_size, s.sector_size) == bytes(s.sector_size)


async def test_round_trip_touches_only_the_sectors_written(sector_storage: SectorStorage) -> None:
    s = sector_storage
    sector = s.sector_size
    payload = _pattern(1, 2 * sector)
    await s.write(3 * sector, payload)
    assert await s.read(3 * sector, 2 * sector) == payload
    assert await s.read(2 * sector, 4 * sector) == bytes(sector) + payload + bytes(sector)
    await s.write(4 * sector, _pattern(2, sector))  # overwrite the second half only
    assert await s.read(3 * sector, 2 * sector) == payload[:sector] + _pattern(2, sector)


async def test_last_sector_and_past_the_end(sector_storage: SectorStorage) -> None:
    s = sector_storage
    last = s.size - s.sector_size
    await s.write(last, _pattern(3, s.sector_size))
    assert await s.read(last, s.sector_size) == _pattern(3, s.sector_size)
    with pytest.raises(UnalignedIoError):
        await s.read(last, 2 * s.sector_size)
    with pytest.raises(UnalignedIoError):
        await s.write(s.size, _pattern(4, s.sector_size))
    assert await s.read(last, s.sector_size) == _pattern(3, s.sector_size)


UNALIGNED: dict[str, Callable[[int], tuple[int, int]]] = {
    "offset-inside-a-sector": lambda sector: (1, sector),
    "length-not-whole-sectors": lambda sector: (0, sector - 1),
    "empty": lambda sector: (0, 0),
    "before-the-start": lambda sector: (-sector, sector),
}


@pytest.mark.parametrize("case", list(UNALIGNED))
async def test_unaligned_or_empty_io_is_refused(sector_storage: SectorStorage, case: str) -> None:
    s = sector_storage
    offset, length = UNALIGNED[case](s.sector_size)
    with pytest.raises(UnalignedIoError) as info:
        await s.read(offset, length)
    assert isinstance(info.value, StorageError)
    with pytest.raises(UnalignedIoError):
        await s.write(offset, _pattern(5, length))
    assert await s.read(0, s.sector_size) == bytes(s.sector_size)


async def test_concurrent_writes_to_distinct_sectors_all_land(
    sector_storage: SectorStorage,
) -> None:
    s = sector_storage
    async with anyio.create_task_group() as tg:
        for index in range(16):
            tg.start_soon(s.write, index * s.sector_size, _pattern(index, s.sector_size))
    whole = await s.read(0, 16 * s.sector_size)
    assert whole == b"".join(_pattern(index, s.sector_size) for index in range(16))


async def test_io_after_close_fails(sector_storage: SectorStorage) -> None:
    s = sector_storage
    await s.close()
    with pytest.raises(StorageError):
        await s.read(0, s.sector_size)
    with pytest.raises(StorageError):
        await s.write(0, bytes(s.sector_size))
    await s.close()  # idempotent
