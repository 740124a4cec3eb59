"""Test doubles for the mailbox tests: a recording volume backend and a switchable authority."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from autoextend.errors import NotSpmError, VolumeError
from autoextend.sectorfakes import MemoryStorage
from autoextend.sectors import StorageError
from autoextend.spm.config import MailboxSettings, mailbox_base
from autoextend.spm.layout import MailboxLayout
from autoextend.volumes import ExtendResult, VolumeNotFound, VolumeRef, VolumeSpaceError

FAST = MailboxSettings(
    offset=0,
    max_hosts=8,
    poll_interval_s=0.002,
    reply_poll_interval_s=0.001,
    reply_poll_max_s=0.01,
    ring_retry_initial_s=0.05,
    ring_retry_max_s=0.2,
    request_timeout_s=10.0,
    full_scan_interval_s=1.0,
)


def layout_for(settings: MailboxSettings = FAST, sector_size: int = 512) -> MailboxLayout:
    return MailboxLayout(mailbox_base(settings), sector_size, settings.max_hosts)


class RecordingBackend:
    """Volume sizes in memory; records every extend; optional delay, capacity and failures."""

    def __init__(
        self,
        sizes: dict[VolumeRef, int] | None = None,
        *,
        delay: float = 0.0,
        capacity: int | None = None,
    ) -> None:
        self.sizes: dict[VolumeRef, int] = dict(sizes or {})
        self.delay = delay
        self.capacity = capacity  # total bytes the "VG" may hold, None = unlimited
        self.calls: list[tuple[VolumeRef, int, bool]] = []
        self.refreshed: list[VolumeRef] = []
        self.visible: dict[VolumeRef, int] = {}  # what "this host" sees until refresh
        self.raise_on_extend: Exception | None = None
        self.gate: anyio.Event | None = None  # when set: every extend waits for it
        self.held = 0  # extends waiting at the gate
        self.running = 0
        self.max_running_per_vg: dict[str, int] = {}
        self._running_vg: dict[str, int] = {}

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        if volume not in self.sizes:
            raise VolumeNotFound(str(volume))
        if self.raise_on_extend is not None:
            raise self.raise_on_extend
        self._running_vg[volume.vg] = self._running_vg.get(volume.vg, 0) + 1
        self.max_running_per_vg[volume.vg] = max(
            self.max_running_per_vg.get(volume.vg, 0), self._running_vg[volume.vg]
        )
        try:
            if self.gate is not None:
                self.held += 1
                try:
                    await self.gate.wait()
                finally:
                    self.held -= 1
            if self.delay:
                await anyio.sleep(self.delay)  # time is the subject: a slow lvextend
            current = self.sizes[volume]
            if size <= current:
                self.calls.append((volume, size, False))
                return ExtendResult(current, False)
            if self.capacity is not None and sum(self.sizes.values()) - current + size > (
                self.capacity
            ):
                raise VolumeSpaceError(f"not enough space for {volume}")
            self.sizes[volume] = size
            self.calls.append((volume, size, True))
            return ExtendResult(size, True, current)
        finally:
            self._running_vg[volume.vg] -= 1

    async def refresh(self, volume: VolumeRef) -> int:
        self.refreshed.append(volume)
        if volume not in self.sizes:
            raise VolumeNotFound(str(volume))
        self.visible[volume] = self.sizes[volume]
        return self.visible[volume]

    async def size(self, volume: VolumeRef) -> int:
        return self.visible.get(volume, self.sizes.get(volume, 0))

    def lookup(self, path: str) -> VolumeRef | None:
        return None

    def device_path(self, volume: VolumeRef) -> str:
        return f"/dev/{volume.vg}/{volume.lv}"

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        raise VolumeError(f"{volume}: this fake cannot reduce")

    async def metadata_size(self, volume: VolumeRef) -> int:
        """One view: the size is the metadata's."""
        return await self.size(volume)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return [self.device_path(volume)]


class Authority:
    def __init__(self) -> None:
        self.valid = True
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if not self.valid:
            raise NotSpmError("lease lost (test)")


class BrokenBackendError(VolumeError):
    pass


VG = "vg0"
VOL = VolumeRef(VG, "lv1")


class ReducingBackend:
    """Sizes in memory (the metadata); ``reduce`` applies at once, then may wait at
    ``after_apply`` (an SPM killed after its lvreduce, before its reply)."""

    def __init__(self, size: int) -> None:
        self.sizes = {VOL: size}
        self.reduces: list[tuple[int, bool]] = []
        self.after_apply: anyio.Event | None = None

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        old = self.sizes[volume]
        self.sizes[volume] = max(old, size)
        return ExtendResult(self.sizes[volume], size > old)

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        if volume not in self.sizes:
            raise VolumeNotFound(str(volume))
        old = self.sizes[volume]
        self.sizes[volume] = min(old, size)
        self.reduces.append((size, size < old))
        if self.after_apply is not None:
            await self.after_apply.wait()
        return ExtendResult(self.sizes[volume], size < old)

    async def refresh(self, volume: VolumeRef) -> int:
        return self.sizes[volume]

    async def metadata_size(self, volume: VolumeRef) -> int:
        """One view: the size is the metadata's."""
        return await self.size(volume)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return []

    async def size(self, volume: VolumeRef) -> int:
        return self.sizes[volume]

    def lookup(self, path: str) -> VolumeRef | None:
        return None

    def device_path(self, volume: VolumeRef) -> str:
        return f"/dev/{volume.vg}/{volume.lv}"


class Watched:
    """Wraps a storage: ``on_read(offset, length)`` runs before every read; writes fail
    while ``fail_writes`` is set (a wrapper, not a subclass: tests/test_layers.py)."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.sector_size = inner.sector_size
        self.size = inner.size
        self.path = inner.path
        self.on_read: Callable[[int, int], None] = lambda offset, length: None
        self.fail_writes = False

    async def read(self, offset: int, length: int) -> bytes:
        self.on_read(offset, length)
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        if self.fail_writes:
            raise StorageError(self.path, "write", offset, len(data), "injected")
        await self.inner.write(offset, data)

    async def close(self) -> None:
        await self.inner.close()
