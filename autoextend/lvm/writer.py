"""SPM-side LVM access: the only code that writes VG metadata.

An :class:`LvmWriter` is built with an :class:`~autoextend.volumes.SpmAuthority` and
calls ``authority.check()`` before **every** command it runs (reports included), so a host
whose SPM term ended runs nothing. Metadata changes pass ``--driverloaded n``: the SPM
changes metadata only and never touches device-mapper, so it does not see a new size before
the host using the LV refreshes (vdsm BZ 1983882). ``--autobackup n`` skips the metadata
backup file on every extend.

Metadata writes are serialized per VG inside this process (lvm2's VG lock serializes them
across processes anyway). On the SPM this lock is never contended: the mailbox executor's
per-VG lock is held around every op (``spm/execute.py`` states the per-VG serialization).
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from autoextend import logs
from autoextend.lvm import report
from autoextend.lvm.errors import LvmCommandError
from autoextend.lvm.lvmconf import LvmCommandConfig, render_config
from autoextend.lvm.names import extents_for
from autoextend.lvm.reader import LvmReports, one_lv, one_vg, volume_arg
from autoextend.lvm.runner import CommandResult, LvmRunner
from autoextend.names import check_name
from autoextend.volumes import ExtendResult, SpmAuthority, VolumeRef

log = logs.get_logger("lvm")

METADATA_ONLY = ("--autobackup", "n", "--driverloaded", "n")


class LvmWriter:
    """Metadata writes (SPM only): extend, create/remove/tag LVs, pvcreate/vgcreate."""

    def __init__(
        self, runner: LvmRunner, config: LvmCommandConfig, authority: SpmAuthority
    ) -> None:
        self._runner = runner
        self._authority = authority
        self._reports = LvmReports(config, readonly=False)
        self.config = config
        # One write command per VG at a time, for callers with no per-VG lock of their own
        # (the local extender, the CLI): with wait_for_locks off lvm2 would fail a second
        # command, and reduce's read-then-lvreduce is one step.
        self._vg_locks: dict[str, anyio.Lock] = {}
        self._extent_sizes: dict[str, int] = {}

    async def _run(self, args: Sequence[str]) -> CommandResult:
        self._authority.check()
        return await self._runner.run(args)

    def _vg_lock(self, vg: str) -> anyio.Lock:
        return self._vg_locks.setdefault(vg, anyio.Lock())

    @property
    def _config(self) -> str:
        return render_config(self.config)

    # Reports (with the VG lock lvm2 takes for a normal read).

    async def vg(self, name: str) -> report.VG:
        vg = one_vg(await self._run(self._reports.vgs_args([name])), name)
        self._extent_sizes[vg.name] = vg.extent_size
        return vg

    async def lv(self, volume: VolumeRef) -> report.LV:
        return one_lv(await self._run(self._reports.lvs_args([volume_arg(volume)])), volume)

    async def _extent_size(self, vg: str) -> int:
        cached = self._extent_sizes.get(vg)
        return cached if cached is not None else (await self.vg(vg)).extent_size

    # Writes.

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Grow ``volume`` to at least ``size`` bytes, rounded up to whole extents.

        Never shrinks. ``changed`` is False when the LV already was at least that large
        (also when another extend got there first). Raises NoSuchVolumeGroup,
        NoSuchLogicalVolume, InsufficientFreeExtents, MissingPvError, LvmLockError,
        LvmTimeoutError, LvmCommandError, NotSpmError.
        """
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        target = volume_arg(volume)
        async with self._vg_lock(volume.vg):
            extent_size = await self._extent_size(volume.vg)
            extents = extents_for(size, extent_size)
            args = ["lvextend", "--config", self._config, *METADATA_ONLY]
            args += ["--extents", str(extents), target]
            try:
                # Optimistic: one command when the LV must grow (the common case). lvextend
                # refuses a size not larger than the current one, which the reload sorts out.
                await self._run(args)
            except LvmCommandError:
                current = await self.lv(volume)
                if current.extent_count >= extents:
                    log.debug("lv already large enough", volume=str(volume), size=current.size)
                    return ExtendResult(current.size, False)
                raise
            log.info("lv extended", volume=str(volume), size=extents * extent_size)
            return ExtendResult(extents * extent_size, True)

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Shrink ``volume`` to ``size`` bytes rounded up to whole extents; never grows
        (``changed`` False when it is that small already). Metadata only (``--driverloaded
        n``): hosts with the LV active see the new size after their refresh. The caller
        made sure no data lives past ``size``."""
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        target = volume_arg(volume)
        async with self._vg_lock(volume.vg):
            extent_size = await self._extent_size(volume.vg)
            extents = extents_for(size, extent_size)
            current = await self.lv(volume)
            if current.extent_count <= extents:
                return ExtendResult(current.size, False)
            args = ["lvreduce", "--config", self._config, *METADATA_ONLY, "--force"]
            await self._run([*args, "--extents", str(extents), target])
            log.info("lv reduced", volume=str(volume), size=extents * extent_size,
                     was=current.size)
            return ExtendResult(extents * extent_size, True)

    async def create_lv(
        self, volume: VolumeRef, size: int, tags: Sequence[str] = (), activate: bool = False
    ) -> report.LV:
        """Create an LV of ``size`` bytes (rounded up to extents), inactive unless asked."""
        extents = extents_for(size, await self._extent_size(volume.vg))
        args = ["lvcreate", "--config", self._config, "--autobackup", "n", "--yes"]
        if activate:
            args += ["--activate", "y"]
        else:
            args += ["--driverloaded", "n", "--activate", "n", "--zero", "n"]
        args += ["--extents", str(extents), "--name", check_name("LV", volume.lv)]
        for tag in tags:
            args += ["--addtag", tag]
        async with self._vg_lock(volume.vg):
            await self._run([*args, check_name("VG", volume.vg)])
        return await self.lv(volume)

    async def remove_lv(self, volume: VolumeRef) -> None:
        args = ["lvremove", "--config", self._config, *METADATA_ONLY, "--yes"]
        async with self._vg_lock(volume.vg):
            await self._run([*args, volume_arg(volume)])

    async def change_tags(
        self, volume: VolumeRef, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> report.LV:
        args = ["lvchange", "--config", self._config, *METADATA_ONLY]
        for tag in add:
            args += ["--addtag", tag]
        for tag in remove:
            args += ["--deltag", tag]
        async with self._vg_lock(volume.vg):
            await self._run([*args, volume_arg(volume)])
        return await self.lv(volume)

    async def pvcreate(self, devices: Sequence[str], metadata_size: int | None = None) -> None:
        """Label ``devices`` as PVs (they must be in this writer's device filter).
        ``metadata_size``: bytes for each metadata area (lvm2's default holds a few hundred
        LVs; a pool with thousands needs more)."""
        args = ["pvcreate", "--config", self._config, "--yes"]
        if metadata_size is not None:
            args += ["--metadatasize", f"{metadata_size}b"]
        await self._run([*args, *devices])

    async def vgcreate(
        self, name: str, devices: Sequence[str], extent_size: int | None = None
    ) -> report.VG:
        args = ["vgcreate", "--config", self._config, "--autobackup", "n"]
        if extent_size is not None:
            args += ["--physicalextentsize", f"{extent_size}b"]
        await self._run([*args, check_name("VG", name), *devices])
        return await self.vg(name)

    async def vgremove(self, name: str) -> None:
        """Remove a VG and all its LVs."""
        args = ["vgremove", "--config", self._config, "--driverloaded", "n", "--yes", "--force"]
        await self._run([*args, check_name("VG", name)])
        self._extent_sizes.pop(name, None)
