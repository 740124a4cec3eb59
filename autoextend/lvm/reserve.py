"""Keep free space in a VG that autoextend never uses (``[policy] vg_reserve_mib``).

A VolumeBackend wrapper (:class:`~autoextend.volumes.Wraps`): before an extension it asks
the backend how much the VG has free and refuses (``VolumeSpaceError``, reported as
"vg_full") when the growth would eat into the reserve. The check is conservative: the
growth is counted from the size this host sees.

The check and the extension that follows run under one lock per VG: two extensions in one VG
cannot both pass the check on the same free space and together eat into the reserve.

Besides the volume boundary it passes on, explicitly, only what cannot grow a volume:
``reduce``, ``holders_paths``, ``free_bytes``, ``vg_figures``, ``aclose``. It never offers
``extend_and_refresh`` (:class:`~autoextend.volumes.ExtendsAndRefreshes`), so the check
cannot be skipped; look through ``inner`` for what the wrapped backend is (its files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio

from autoextend.lvm.errors import VolumeSpaceError
from autoextend.lvm.names import round_up_to_extent
from autoextend.volumes import (
    ExtendResult,
    ReportsVgFigures,
    VgFigures,
    VolumeBackend,
    VolumeRef,
)


class FreeSpaceBackend(VolumeBackend, ReportsVgFigures, Protocol):
    """A pool's backend (what the service runs on): the volume boundary, the VGs' free bytes
    (the reserve check) and figures (the capacity watcher), and ``aclose``."""

    async def free_bytes(self, vg: str) -> int | None: ...

    async def aclose(self) -> None: ...


class ReservedSpace:
    def __init__(
        self, inner: FreeSpaceBackend, reserves: Mapping[str, int], extent_size: int
    ) -> None:
        self.inner = inner
        self.reserves = dict(reserves)
        self.extent_size = extent_size
        self.locks: dict[str, anyio.Lock] = {}  # per VG: check + extend as one step

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        reserve = self.reserves.get(volume.vg, 0)
        if reserve <= 0:
            return await self.inner.extend(volume, size)
        lock = self.locks.get(volume.vg)
        if lock is None:
            lock = self.locks[volume.vg] = anyio.Lock()
        async with lock:
            current = await self.inner.size(volume)
            growth = round_up_to_extent(size, self.extent_size) - current
            free = await self.inner.free_bytes(volume.vg)
            if growth > 0 and free is not None and free - growth < reserve:
                raise VolumeSpaceError(
                    f"VG {volume.vg}: growing {volume} by {growth} bytes would leave"
                    f" {free - growth} bytes free, below the {reserve} bytes reserved"
                )
            return await self.inner.extend(volume, size)

    async def refresh(self, volume: VolumeRef) -> int:
        return await self.inner.refresh(volume)

    # Explicit pass-throughs only: what the guard does not care about. Never a way to grow
    # (no extend_and_refresh, see ExtendsAndRefreshes): that would skip the check.

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        return await self.inner.reduce(volume, size)

    async def vg_extent_size(self, vg: str) -> int:
        """The extent size the guard rounds with (``volumes.KnowsExtent``)."""
        return self.extent_size

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return self.inner.holders_paths(volume)

    async def size(self, volume: VolumeRef) -> int:
        return await self.inner.size(volume)

    async def metadata_size(self, volume: VolumeRef) -> int:
        return await self.inner.metadata_size(volume)

    def lookup(self, path: str) -> VolumeRef | None:
        return self.inner.lookup(path)

    def device_path(self, volume: VolumeRef) -> str:
        return self.inner.device_path(volume)

    async def free_bytes(self, vg: str) -> int | None:
        return await self.inner.free_bytes(vg)

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        """The wrapped backend's figures (the reserve is part of the VG's free bytes)."""
        return await self.inner.vg_figures(vgs)

    async def aclose(self) -> None:
        await self.inner.aclose()


def with_reserves(backend: FreeSpaceBackend, reserves_mib: Mapping[str, int],
                  extent_size: int) -> FreeSpaceBackend:
    """``backend`` guarded by the configured reserves (unchanged when there are none)."""
    reserves = {vg: mib << 20 for vg, mib in reserves_mib.items() if mib > 0}
    return ReservedSpace(backend, reserves, extent_size) if reserves else backend
