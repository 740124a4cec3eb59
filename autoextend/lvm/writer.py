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

After a reduce or a remove, the extents it freed are discarded on the PV devices inside the
same per-VG critical section, before any other command can hand them out again
(``discard.py`` holds the argument).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from autoextend import logs
from autoextend.errors import NotSpmError
from autoextend.lvm import discard, report
from autoextend.lvm.errors import LvmCommandError, LvmError, NoSuchLogicalVolume
from autoextend.lvm.foreign import WriteLedger
from autoextend.lvm.lvmconf import LvmCommandConfig, render_config
from autoextend.lvm.names import extents_for
from autoextend.lvm.reader import (
    LvmReports,
    one_lv,
    one_vg,
    parse_or_raise,
    report_args,
    volume_arg,
)
from autoextend.lvm.runner import CommandResult, LvmRunner, runner_for
from autoextend.lvm.vsize import vsize_tag
from autoextend.names import check_name
from autoextend.volumes import ExtendResult, SpmAuthority, VolumeRef

log = logs.get_logger("lvm")


@dataclass
class WriterTally:
    """What outlives one writer (one SPM term): the bytes discarded, and the ledger of our
    own metadata commits that the foreign-write audit compares ``vg_seqno`` with."""

    discarded: discard.Discarded = field(default_factory=discard.Discarded)
    ledger: WriteLedger = field(default_factory=WriteLedger)

METADATA_ONLY = ("--autobackup", "n", "--driverloaded", "n")
# lvextend's "Size of logical volume vg/lv changed from 1.00 GiB (256 extents) to ...".
_RESIZED = re.compile(r"changed from [^(]*\((\d+) extents\) to")


def resized_from(output: str) -> int | None:
    """The extent count an lvextend or lvreduce reported the LV had before, if it said."""
    found = _RESIZED.search(output)
    return int(found.group(1)) if found else None


class LvmWriter:
    """Metadata writes (SPM only): extend, create/remove/tag LVs, pvcreate/vgcreate."""

    def __init__(
        self, runner: LvmRunner, config: LvmCommandConfig, authority: SpmAuthority,
        *, discard_freed: bool = True, tally: WriterTally | None = None,
    ) -> None:
        self._runner = runner
        self._authority = authority
        self._reports = LvmReports(config, readonly=False)
        self.config = config
        # One write command per VG at a time, for callers with no per-VG lock of their own
        # (the local extender, the CLI): with wait_for_locks off lvm2 would fail a second
        # command; reduce's read-then-lvreduce and a remove's discard of the extents it
        # freed are one step each.
        self._vg_locks: dict[str, anyio.Lock] = {}
        self._extent_sizes: dict[str, int] = {}
        self._discard_freed = discard_freed
        # Shared with the service when it passes one in (one per process, across terms).
        self.tally = tally if tally is not None else WriterTally()
        self.discarded = self.tally.discarded
        self.tally.ledger.writer_started(authority)
        self._no_discard: set[str] = set()  # PV devices that refused BLKDISCARD

    async def _run(self, args: Sequence[str], vg: str | None) -> CommandResult:
        """Run one command on ``vg`` (None: no one VG), through that VG's runner where the
        runner keeps one per VG (``runner.runner_for``: VGs then run in parallel)."""
        self._authority.check()
        return await runner_for(self._runner, vg).run(args)

    async def _commit(self, vg: str, args: Sequence[str]) -> CommandResult:
        """Run one metadata command on ``vg`` (its lock held), counted in the ledger from
        before it runs until it ends (``foreign.py``)."""
        self.tally.ledger.begin(vg)
        committed = False
        try:
            result = await self._run(args, vg)
            committed = True
            return result
        finally:
            self.tally.ledger.end(vg, committed)

    def _vg_lock(self, vg: str) -> anyio.Lock:
        return self._vg_locks.setdefault(vg, anyio.Lock())

    @property
    def _config(self) -> str:
        return render_config(self.config)

    # Reports (with the VG lock lvm2 takes for a normal read).

    async def vg(self, name: str) -> report.VG:
        vg = one_vg(await self._run(self._reports.vgs_args([name]), name), name)
        self._extent_sizes[vg.name] = vg.extent_size
        return vg

    async def lv(self, volume: VolumeRef) -> report.LV:
        return one_lv(await self._run(self._reports.lvs_args([volume_arg(volume)]), volume.vg),
                      volume)

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
                result = await self._commit(volume.vg, args)
            except LvmCommandError:
                current = await self.lv(volume)
                if current.extent_count >= extents:
                    log.debug("lv already large enough", volume=str(volume), size=current.size)
                    return ExtendResult(current.size, False, current.size)
                raise
            before = resized_from(result.stdout + result.stderr)
            log.info("lv extended", volume=str(volume), size=extents * extent_size)
            return ExtendResult(extents * extent_size, True,
                                None if before is None else before * extent_size)

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
            before = await self._segments(volume.vg)
            await self._commit(volume.vg, [*args, "--extents", str(extents), target])
            log.info("lv reduced", volume=str(volume), size=extents * extent_size,
                     was=current.size)
            await self._give_back(volume, before)
            return ExtendResult(extents * extent_size, True)

    async def create_lv(
        self, volume: VolumeRef, size: int, tags: Sequence[str] = (), activate: bool = False,
        *, virtual_size: int | None = None,
    ) -> report.LV:
        """Create an LV of ``size`` bytes (rounded up to extents), inactive unless asked.
        ``virtual_size``: the disk image's virtual size, set as the ``autoextend.vsize``
        tag (``vsize.py``: the pool's committed space counts it)."""
        if virtual_size is not None:
            tags = [*tags, vsize_tag(virtual_size)]
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
            await self._commit(volume.vg, [*args, check_name("VG", volume.vg)])
        return await self.lv(volume)

    async def find_lv(self, volume: VolumeRef) -> report.LV | None:
        """The LV, or None when its VG has no LV of that name (NoSuchVolumeGroup raised)."""
        try:
            return await self.lv(volume)
        except NoSuchLogicalVolume:
            return None

    async def pv_growth(self, vg: str) -> tuple[report.PvGrowth, ...]:
        """The VG's PVs with their devices' sizes (what ``grow_pvs`` would use)."""
        args = report_args("pvs", report.PV_GROWTH_FIELDS, self._config, [], readonly=False)
        result = await self._run([*args, "--select", f"vg_name={check_name('VG', vg)}"], vg)
        return parse_or_raise(result, report.parse_pv_growth)

    async def grow_pvs(self, vg: str) -> list[report.PvGrowth]:
        """``pvresize`` every PV of ``vg`` whose device now holds more extents than the PV
        has (a grown LUN); one metadata commit per PV that grew, none when none did (so a
        second call changes nothing). Returns the PVs resized (as they were before)."""
        grown: list[report.PvGrowth] = []
        async with self._vg_lock(vg):
            for pv in await self.pv_growth(vg):
                if pv.room <= pv.extent_count:
                    continue
                args = ["pvresize", "--config", self._config, "--driverloaded", "n", "--yes"]
                await self._commit(vg, [*args, pv.name])
                log.info("pv resized", vg=vg, pv=pv.name, extents=pv.extent_count,
                         room=pv.room)
                grown.append(pv)
        return grown

    async def remove_lv(self, volume: VolumeRef) -> None:
        args = ["lvremove", "--config", self._config, *METADATA_ONLY, "--yes"]
        async with self._vg_lock(volume.vg):
            before = await self._segments(volume.vg)
            await self._commit(volume.vg, [*args, volume_arg(volume)])
            await self._give_back(volume, before)

    # Discard of freed extents (see discard.py; called with the VG lock held).

    async def segments(self, vg: str) -> tuple[report.PvSegment, ...]:
        """The VG's PV segments: which extents of which PV each LV holds, and which are free."""
        args = report_args("pvs", report.PVSEG_FIELDS, self._config, [], readonly=False)
        result = await self._run([*args, "--segments", "--select",
                                  f"vg_name={check_name('VG', vg)}"], vg)
        return parse_or_raise(result, report.parse_pvsegs)

    async def _segments(self, vg: str) -> tuple[report.PvSegment, ...] | None:
        return await self.segments(vg) if self._discard_freed else None

    async def _give_back(self, volume: VolumeRef,
                         before: tuple[report.PvSegment, ...] | None) -> None:
        """Discard what the command just freed. The command has succeeded: a failure here
        is logged, never raised (the extents stay allocated in the array, nothing else)."""
        if before is None:
            return
        try:
            ranges = discard.freed_ranges(before, await self._segments(volume.vg) or (),
                                          volume.lv)
            done = await self._discard(ranges)
        except (OSError, LvmError, NotSpmError) as err:
            log.error("discard of freed extents failed (they stay allocated in the array)",
                      volume=str(volume), error=str(err))
            return
        if done:
            log.info("freed extents discarded", volume=str(volume), bytes=done)

    async def _discard(self, ranges: list[discard.ByteRange]) -> int:
        done = 0
        for piece in (p for r in ranges for p in discard.split(r)):
            if piece.device in self._no_discard:
                continue
            self._authority.check()  # a discard writes shared storage: only in our term
            if not await anyio.to_thread.run_sync(discard.discard, piece):
                log.warning("device does not support discard: freed extents stay allocated"
                            " in the array", device=piece.device)
                self._no_discard.add(piece.device)
                continue
            done += piece.length
            self.discarded.bytes += piece.length
        return done

    async def change_tags(
        self, volume: VolumeRef, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> report.LV:
        args = ["lvchange", "--config", self._config, *METADATA_ONLY]
        for tag in add:
            args += ["--addtag", tag]
        for tag in remove:
            args += ["--deltag", tag]
        async with self._vg_lock(volume.vg):
            await self._commit(volume.vg, [*args, volume_arg(volume)])
        return await self.lv(volume)

    async def pvcreate(self, devices: Sequence[str], metadata_size: int | None = None) -> None:
        """Label ``devices`` as PVs (they must be in this writer's device filter).
        ``metadata_size``: bytes for each metadata area (lvm2's default holds a few hundred
        LVs; a pool with thousands needs more)."""
        args = ["pvcreate", "--config", self._config, "--yes"]
        if metadata_size is not None:
            args += ["--metadatasize", f"{metadata_size}b"]
        await self._run([*args, *devices], None)

    async def vgcreate(
        self, name: str, devices: Sequence[str], extent_size: int | None = None
    ) -> report.VG:
        args = ["vgcreate", "--config", self._config, "--autobackup", "n"]
        if extent_size is not None:
            args += ["--physicalextentsize", f"{extent_size}b"]
        await self._run([*args, check_name("VG", name), *devices], name)
        return await self.vg(name)

    async def vgremove(self, name: str) -> None:
        """Remove a VG and all its LVs."""
        args = ["vgremove", "--config", self._config, "--driverloaded", "n", "--yes", "--force"]
        await self._run([*args, check_name("VG", name)], name)
        self._extent_sizes.pop(name, None)
