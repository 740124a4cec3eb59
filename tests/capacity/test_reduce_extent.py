"""Where reduce planning takes the extent size from: the first layer of the backend (through
wrappers) with a fixed extent size, else the first that reads its VGs' metadata, else the
policy's ``extent_mib``. Duck typing is gone: each is an explicit protocol."""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.capacity.reduce import ReadsVgs, extent_of
from autoextend.volumes import FixedExtent, VolumeRef, Wraps

MiB = 1 << 20
VOL = VolumeRef("vg", "lv")


@dataclass(frozen=True)
class Vg:
    extent_size: int


class Reader:
    def __init__(self, extents: dict[str, int]) -> None:
        self.extents = extents
        self.asked: list[str] = []

    async def vg(self, name: str) -> Vg:
        self.asked.append(name)
        return Vg(self.extents[name])


class ReadingBackend:
    """Like the lvm backend: no extent_size of its own, a reader of VG metadata."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader


class Bare:
    """Knows nothing about extents."""


class Wrapper:
    def __init__(self, inner: object) -> None:
        self.inner = inner


class FixedWrapper(Wrapper):
    extent_size = 8 * MiB


async def test_a_backend_without_extent_size_asks_its_reader() -> None:
    reader = Reader({"vg": 32 * MiB})
    backend = ReadingBackend(reader)
    assert isinstance(backend, ReadsVgs) and not isinstance(backend, FixedExtent)
    assert await extent_of(backend, VOL, 4 * MiB) == 32 * MiB
    assert reader.asked == ["vg"]


async def test_the_reader_is_found_through_wrappers() -> None:
    reader = Reader({"vg": 16 * MiB})
    wrapped = Wrapper(Wrapper(ReadingBackend(reader)))
    assert isinstance(wrapped, Wraps)
    assert await extent_of(wrapped, VOL, 4 * MiB) == 16 * MiB


async def test_the_outermost_fixed_extent_wins_without_reading() -> None:
    reader = Reader({"vg": 16 * MiB})
    assert await extent_of(FixedWrapper(ReadingBackend(reader)), VOL, 4 * MiB) == 8 * MiB
    assert reader.asked == []


async def test_nothing_known_falls_back_to_the_policy() -> None:
    assert await extent_of(Bare(), VOL, 4 * MiB) == 4 * MiB
    assert await extent_of(Wrapper(Bare()), VOL, 2 * MiB) == 2 * MiB
