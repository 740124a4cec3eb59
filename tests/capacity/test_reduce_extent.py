"""Where reduce planning takes the extent size from: the backend's one capability
(``volumes.KnowsExtent``: a fixed size, or the VG's metadata), else the policy's
``extent_mib``. The reserve guard answers with its own size: no caller walks the wrappers."""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.capacity.reduce import extent_of
from autoextend.lvm.reserve import ReservedSpace
from autoextend.monitor.memory import MemoryVolumes
from autoextend.volumes import KnowsExtent, LocalAuthority, VolumeRef

MiB = 1 << 20
VOL = VolumeRef("vg", "lv")


@dataclass(frozen=True)
class Vg:
    extent_size: int


class ReadingBackend:
    """Like the lvm backend: reads the extent size from the VG's metadata."""

    def __init__(self, extents: dict[str, int]) -> None:
        self.extents = extents
        self.asked: list[str] = []

    async def vg_extent_size(self, vg: str) -> int:
        self.asked.append(vg)
        return self.extents[vg]


class Bare:
    """Knows nothing about extents."""


async def test_a_backend_that_reads_its_vg_is_asked() -> None:
    backend = ReadingBackend({"vg": 32 * MiB})
    assert isinstance(backend, KnowsExtent)
    assert await extent_of(backend, VOL, 4 * MiB) == 32 * MiB
    assert backend.asked == ["vg"]


async def test_the_reserve_guard_answers_with_its_own_extent_size() -> None:
    volumes = MemoryVolumes(extent_size=2 * MiB, authority=LocalAuthority())
    assert await extent_of(volumes, VOL, 4 * MiB) == 2 * MiB
    guarded = ReservedSpace(volumes, {"vg": 8 * MiB}, 8 * MiB)
    assert await extent_of(guarded, VOL, 4 * MiB) == 8 * MiB


async def test_nothing_known_falls_back_to_the_policy() -> None:
    assert await extent_of(Bare(), VOL, 4 * MiB) == 4 * MiB
