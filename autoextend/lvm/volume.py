"""The volume backend boundary: what the monitor, extenders and the SPM need of volumes.

A volume is an LV ``vg/lv``. Backends: ``lvm`` (production) and ``loop`` (sparse files on
loop devices, for machines without device-mapper). Both pass the same contract tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, order=True)
class VolumeRef:
    vg: str
    lv: str

    def __str__(self) -> str:
        return f"{self.vg}/{self.lv}"


@dataclass(frozen=True)
class ExtendResult:
    """``size`` is the volume's size in metadata afterwards; ``changed`` is False when the
    volume was already at least as large as asked (idempotent no-op, or another extend got
    there first)."""

    size: int
    changed: bool


class VolumeBackend(Protocol):
    """Raises :class:`~autoextend.errors.VolumeError` subclasses on failure."""

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Grow to at least ``size`` (rounded up to the extent size). Never shrinks."""
        ...

    async def refresh(self, volume: VolumeRef) -> int:
        """Make this host see the current size; returns the size this host now sees."""
        ...

    async def size(self, volume: VolumeRef) -> int:
        """The size this host sees now."""
        ...

    def lookup(self, path: str) -> VolumeRef | None:
        """Map a device path to its volume, or None when it is not one of ours."""
        ...

    def device_path(self, volume: VolumeRef) -> str: ...
