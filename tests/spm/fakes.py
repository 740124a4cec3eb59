"""Test doubles for the mailbox tests: a recording volume backend and a switchable authority."""

from __future__ import annotations

import anyio

from autoextend.errors import NotSpmError, VolumeError
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
            return ExtendResult(size, True)
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
