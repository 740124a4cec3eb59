"""The production volume backend: LVs of a shared VG, driven through lvm2.

Extends go through an :class:`~autoextend.lvm.writer.LvmWriter` (SPM only; a host without
one gets NotSpmError), refresh through ``lvchange --refresh``, and sizes are what this host
sees: the active LV's block device size, or the metadata size where the LV is not active
(e.g. no device-mapper on this host).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from autoextend.errors import NotSpmError
from autoextend.lvm import report
from autoextend.lvm.errors import NoSuchVolumeGroup
from autoextend.lvm.names import lvm_device_path, parse_lvm_device_path
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import LvmRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.volumes import ExtendResult, VgFigures, VolumeRef


def _block_device_size(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class LvmVolumeBackend:
    """:class:`~autoextend.volumes.VolumeBackend` over lvm2."""

    def __init__(
        self,
        runner: LvmRunner,
        reader: LvmReader,
        writer: LvmWriter | None,
        vgs: tuple[str, ...] = (),
    ) -> None:
        self._runner = runner
        self.reader = reader
        self.writer = writer
        self._vgs = frozenset(vgs)
        # Per VG: the segment counts at a vg_seqno (segments change only with the metadata).
        self._segments: dict[str, tuple[int, report.SegmentCounts]] = {}

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        if self.writer is None:
            raise NotSpmError("this host has no LVM writer (extends go through the SPM)")
        return await self.writer.extend(volume, size)

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        if self.writer is None:
            raise NotSpmError("this host has no LVM writer (reduces go through the SPM)")
        return await self.writer.reduce(volume, size)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        """The LV's device path on this host (absent when it is not active here)."""
        return [self.device_path(volume)]

    async def vg_extent_size(self, vg: str) -> int:
        """The VG's extent size, from its metadata (``volumes.KnowsExtent``)."""
        return (await self.reader.vg(vg)).extent_size

    async def free_bytes(self, vg: str) -> int | None:
        """Free bytes in the VG, from its metadata (read-only report)."""
        info = await self.reader.vg(vg)
        return info.free_extents * info.extent_size

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        """``vg_size``, ``vg_free`` and the metadata area figures of ``vgs`` from one
        read-only ``vgs`` report, and their LVs' segments (``volumes.ReportsVgFigures``).

        The segments come from one ``lvs -o seg_count`` report per VG, and only when the
        VG's ``vg_seqno`` moved since the last one (segments change only with the
        metadata): at most one more report per look and VG, none while nothing changes.
        A VG lvm2 does not know is left out, as the other backends do: lvm2 refuses the
        whole report then, so each VG is asked alone."""
        if not vgs:
            return []
        try:
            found = await self.reader.vgs(*vgs)
        except NoSuchVolumeGroup:
            found = ()
            for name in vgs:
                try:
                    found += await self.reader.vgs(name)
                except NoSuchVolumeGroup:
                    continue
        out = []
        for vg in found:
            try:
                segs = await self._segment_counts(vg)
            except NoSuchVolumeGroup:
                continue  # removed between the two reports
            out.append(VgFigures(vg.name, vg.size, vg.free, vg.mda_size, vg.mda_free,
                                 segs.total, segs.max))
        return out

    async def _segment_counts(self, vg: report.VG) -> report.SegmentCounts:
        known = self._segments.get(vg.name)
        if known is not None and known[0] == vg.seqno:
            return known[1]
        counts = await self.reader.segment_counts(vg.name)
        self._segments[vg.name] = (vg.seqno, counts)
        return counts

    async def refresh(self, volume: VolumeRef) -> int:
        await self.reader.refresh(volume)
        return await self.size(volume)

    async def metadata_size(self, volume: VolumeRef) -> int:
        """The LV's size in the VG metadata (``lvs --readonly``), whatever this host's
        device-mapper table says."""
        return (await self.reader.lv(volume)).size

    async def lv_views(self, vg: str) -> dict[VolumeRef, tuple[int, int]]:
        """Every LV of ``vg`` as ``(view, metadata)`` sizes, from one ``lvs --readonly`` of
        the VG and one ``lseek`` per LV active here (the view check, ``monitor/views.py``).
        An LV not active here (or no device-mapper) has no view but its metadata size.
        Raises NoSuchVolumeGroup."""
        lvs = await self.reader.lvs(vg)
        active = self.reader.config.activation

        def read() -> dict[VolumeRef, tuple[int, int]]:
            found = {}
            for lv in lvs:
                seen = _block_device_size(self.device_path(lv.ref)) if active and lv.active \
                    else None
                found[lv.ref] = (lv.size if seen is None else seen, lv.size)
            return found

        return await anyio.to_thread.run_sync(read)

    async def size(self, volume: VolumeRef) -> int:
        lv = await self.reader.lv(volume)
        if self.reader.config.activation and lv.active:
            seen = await anyio.to_thread.run_sync(_block_device_size, self.device_path(volume))
            if seen is not None:
                return seen
        return lv.size

    def lookup(self, path: str) -> VolumeRef | None:
        volume = parse_lvm_device_path(path)
        if volume is None or (self._vgs and volume.vg not in self._vgs):
            return None
        return volume

    def device_path(self, volume: VolumeRef) -> str:
        return lvm_device_path(volume)

    async def aclose(self) -> None:
        await self._runner.aclose()
