"""Host-side LVM access: reports with ``--readonly`` and ``lvchange --refresh``. Nothing here
writes VG metadata, so any host may hold an :class:`LvmReader`.

The report argument lists are also used by the SPM's writer (``writer.py``), which reads
without ``--readonly`` under its own lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from autoextend.lvm import report
from autoextend.lvm.errors import (
    DeviceMapperUnavailable,
    LvmReportError,
    NoSuchLogicalVolume,
    NoSuchVolumeGroup,
    ReportFormatError,
)
from autoextend.lvm.lvmconf import LvmCommandConfig, render_config
from autoextend.lvm.runner import CommandResult, LvmRunner, runner_for
from autoextend.names import check_name
from autoextend.volumes import VolumeRef

T = TypeVar("T")

REPORT_OPTIONS = ("--reportformat", "json", "--units", "b", "--nosuffix")


def report_args(
    command: str, fields: Sequence[str], config: str, targets: Sequence[str], readonly: bool
) -> list[str]:
    """``pvs``/``vgs``/``lvs`` with exactly ``fields``, in bytes, as JSON."""
    args = [command, "--config", config, *REPORT_OPTIONS, "-o", ",".join(fields)]
    if readonly:
        args.append("--readonly")
    return [*args, *targets]


def volume_arg(volume: VolumeRef) -> str:
    return f"{check_name('VG', volume.vg)}/{check_name('LV', volume.lv)}"


def parse_or_raise(result: CommandResult, parse: Callable[[str], T]) -> T:
    try:
        return parse(result.stdout)
    except ReportFormatError as err:
        raise LvmReportError(result.argv, err.reason, result.stdout) from err


class LvmReports:
    """The report operations shared by the reader (``--readonly``) and the writer."""

    def __init__(self, config: LvmCommandConfig, readonly: bool) -> None:
        self.config = config
        self._readonly = readonly

    def pvs_args(self) -> list[str]:
        return report_args("pvs", report.PV_FIELDS, render_config(self.config), [], self._readonly)

    def vgs_args(self, names: Sequence[str]) -> list[str]:
        targets = [check_name("VG", name) for name in names]
        return report_args(
            "vgs", report.VG_FIELDS, render_config(self.config), targets, self._readonly
        )

    def lvs_args(self, targets: Sequence[str]) -> list[str]:
        return report_args(
            "lvs", report.LV_FIELDS, render_config(self.config), targets, self._readonly
        )

    def segment_counts_args(self, vg: str) -> list[str]:
        return report_args("lvs", report.LVSEG_COUNT_FIELDS, render_config(self.config),
                           [check_name("VG", vg)], self._readonly)


def one_vg(result: CommandResult, name: str) -> report.VG:
    vgs = parse_or_raise(result, report.parse_vgs)
    for vg in vgs:
        if vg.name == name:
            return vg
    raise NoSuchVolumeGroup(result.argv, f'Volume group "{name}" not found', 0)


def one_lv(result: CommandResult, volume: VolumeRef) -> report.LV:
    lvs = parse_or_raise(result, report.parse_lvs)
    for lv in lvs:
        if lv.vg == volume.vg and lv.name == volume.lv:
            return lv
    raise NoSuchLogicalVolume(result.argv, f"Failed to find logical volume {volume}", 0)


class LvmReader:
    """Read-only LVM access for any host: ``--readonly`` reports, plus refresh."""

    def __init__(self, runner: LvmRunner, config: LvmCommandConfig) -> None:
        self._runner = runner
        self._reports = LvmReports(config, readonly=True)
        self.config = config

    async def _run(self, args: list[str], vg: str | None) -> CommandResult:
        """Through ``vg``'s own runner where the runner keeps one per VG (None: no one VG)."""
        return await runner_for(self._runner, vg).run(args)

    async def pvs(self, vg: str | None = None) -> tuple[report.PV, ...]:
        """The pool's PVs (only those of ``vg`` if given)."""
        result = await self._run(self._reports.pvs_args(), None)
        pvs = parse_or_raise(result, report.parse_pvs)
        return pvs if vg is None else tuple(pv for pv in pvs if pv.vg == vg)

    async def vgs(self, *names: str) -> tuple[report.VG, ...]:
        result = await self._run(self._reports.vgs_args(names),
                                 names[0] if len(names) == 1 else None)
        return parse_or_raise(result, report.parse_vgs)

    async def vg(self, name: str) -> report.VG:
        """Raises NoSuchVolumeGroup."""
        return one_vg(await self._run(self._reports.vgs_args([name]), name), name)

    async def lvs(self, vg: str) -> tuple[report.LV, ...]:
        result = await self._run(self._reports.lvs_args([check_name("VG", vg)]), vg)
        return parse_or_raise(result, report.parse_lvs)

    async def segment_counts(self, vg: str) -> report.SegmentCounts:
        """The VG's LVs and their segments (one ``lvs -o seg_count`` report); a VG without
        LVs has none. Raises NoSuchVolumeGroup."""
        result = await self._run(self._reports.segment_counts_args(vg), vg)
        counts = parse_or_raise(result, report.parse_segment_counts)
        return counts.get(vg, report.SegmentCounts(vg, 0, 0, 0))

    async def lv(self, volume: VolumeRef) -> report.LV:
        """Raises NoSuchVolumeGroup / NoSuchLogicalVolume."""
        result = await self._run(self._reports.lvs_args([volume_arg(volume)]), volume.vg)
        return one_lv(result, volume)

    async def vg_look(self, vg: str) -> tuple[int, dict[str, int]]:
        """``vg_seqno`` and {lv: size} of ``vg`` from one ``lvs`` report (``vgs`` for the
        seqno of a VG without LVs): the foreign-write audit's look."""
        name = check_name("VG", vg)
        args = report_args("lvs", report.LOOK_FIELDS, render_config(self.config), [name],
                           readonly=True)
        seqno, sizes = parse_or_raise(await self._run(args, vg),
                                      lambda text: report.parse_vg_look(text, vg))
        if seqno is None:
            seqno = (await self.vg(vg)).seqno
        return seqno, sizes

    async def refresh(self, volume: VolumeRef) -> None:
        """Reload an active LV's device-mapper table from current metadata
        (``lvchange --refresh``); needs device-mapper.

        Raises DeviceMapperUnavailable when activation is off: lvm2 would then exit 0 having
        done nothing, and the caller would wrongly believe it sees the new size.
        """
        args = ["lvchange", "--config", render_config(self.config), "--refresh"]
        args.append(volume_arg(volume))
        if not self.config.activation:
            raise DeviceMapperUnavailable(
                args, "activation is disabled (no device-mapper on this host)", None
            )
        await self._run(args, volume.vg)

    async def set_active(self, volume: VolumeRef, active: bool) -> None:
        """Activate or deactivate an LV on this host (``lvchange -a``; device-mapper only,
        no metadata change)."""
        args = ["lvchange", "--config", render_config(self.config), "--activate"]
        args += ["y" if active else "n", volume_arg(volume)]
        if not self.config.activation:
            raise DeviceMapperUnavailable(
                args, "activation is disabled (no device-mapper on this host)", None
            )
        await self._run(args, volume.vg)
