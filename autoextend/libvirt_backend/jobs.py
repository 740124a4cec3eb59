"""Block jobs through libvirt: the ``<mirror>`` of a disk in the live XML is a job's target.

Pure parsing plus one event callback. During ``virsh blockcopy`` (job ``copy``) and
``virsh blockcommit --active`` (job ``active-commit``) libvirt shows the image the job writes
as ``<disk><mirror job=...><source dev=... index='N'/></mirror>``; its indexed name ``vda[N]``
is what ``setBlockThreshold`` arms and what ``VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD`` reports.
Its numbers come from the block stats entry with ``backingIndex == N`` (an active commit's
base is in the chain, so it has one). A job target without such an entry is skipped with a
reason: the monitor never guesses numbers. ``VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2`` makes the
monitor look again (a job started, became ready, pivoted or ended) and reports failures.
A snapshot merge (a non-active commit) has no ``<mirror>``: ``merges.py`` names its base,
which then goes through :func:`job_targets` and :class:`CommitNeeds` like a mirror's.
A push-mode backup's target gets its need from :class:`BackupNeeds`.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoextend.libvirt_backend.domxml import indexed_name
from autoextend.libvirt_backend.stats import DrivesFound, _uint, clean_path
from autoextend.libvirt_backend.tracker import DomainTracker
from autoextend.logs import get_logger
from autoextend.monitor.protocols import DriveInfo, DrivesChanged, HypervisorEvent, JobEnded
from autoextend.qemuimg import FORMATS, FormatMeasure, Measure, qemu_img_measure

log = get_logger("libvirt")

#: libvirt's ``<mirror job=...>`` -> the job kinds autoextend reports.
JOB_KINDS = {"copy": "mirror", "active-commit": "commit", "commit": "commit",
             "backup": "backup"}

# virDomainBlockJobType and virConnectDomainEventBlockJobStatus (libvirt 9.0).
_TYPES = {1: "pull", 2: "mirror", 3: "commit", 4: "commit", 5: "backup"}
COMPLETED, FAILED, CANCELED, READY = 0, 1, 2, 3


@dataclass(frozen=True)
class Mirror:
    target: str   # the disk: vda
    job: str      # libvirt's job name: copy, active-commit
    index: int    # N in vda[N]
    path: str


def parse_mirrors(xml: str) -> list[Mirror]:
    """Every disk's ``<mirror>`` that has an indexed ``<source>``; [] on XML that does not
    parse (the drive parser reports that)."""
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError, RecursionError):
        return []
    found: list[Mirror] = []
    for disk in root.iterfind("./devices/disk"):
        target_el, mirror = disk.find("target"), disk.find("mirror")
        if target_el is None or mirror is None:
            continue
        source = mirror.find("source")
        raw = source.get("index") if source is not None else None
        if source is None or raw is None or not raw.isdigit() or len(raw) > 10:
            continue
        path = source.get("dev") or source.get("file") or ""
        target = target_el.get("dev", "")
        if target and clean_path(path):
            found.append(Mirror(target, mirror.get("job", ""), int(raw), path))
    return found


def job_targets(vm: str, stats: Mapping[str, Any], mirrors: list[Mirror],
                found: DrivesFound) -> list[DriveInfo]:
    """A DriveInfo (``vda[N]``, ``job`` set) per mirror with block stats; the others are
    added to ``found.skipped``."""
    count = _uint(stats, "block.count") or 0
    targets: list[DriveInfo] = []
    for m in mirrors:
        kind = JOB_KINDS.get(m.job)
        name = indexed_name(m.target, m.index)
        if kind is None:
            continue
        entry = next((i for i in range(min(count, 100_000))
                      if stats.get(f"block.{i}.name") == m.target
                      and _uint(stats, f"block.{i}.backingIndex") == m.index), None)
        if entry is None:
            found.skipped.append((name, f"no block stats for the {kind} target"))
            continue
        numbers = [_uint(stats, f"block.{entry}.{k}") for k in
                   ("capacity", "allocation", "physical")]
        capacity, allocation, physical = numbers
        if capacity is None or allocation is None or physical is None or capacity == 0:
            found.skipped.append((name, "job target stats lack sizes"))
            continue
        targets.append(DriveInfo(
            vm=vm, drive=name, node=name, path=m.path, capacity=capacity,
            allocation=allocation, physical=physical,
            threshold=_uint(stats, f"block.{entry}.threshold") or 0,
            job=kind, job_id=m.target))
    return targets


def block_job_events(vm: str, disk: str, job_type: int,
                     status: int) -> list[HypervisorEvent]:
    """VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 -> our events (libvirt gives no failure reason)."""
    kind = _TYPES.get(job_type, "unknown")
    if status == FAILED:
        return [JobEnded(vm, disk, kind, "block job failed (libvirt gives no reason)"),
                DrivesChanged(vm)]
    if status in (COMPLETED, CANCELED):
        return [JobEnded(vm, disk, kind), DrivesChanged(vm)]
    return [DrivesChanged(vm)]


class CommitNeeds:
    """``qemu-img measure`` of a commit's top, once per job (the monitor grows the base to
    it before the commit writes much; see ``monitor/jobpolicy.py``). An active commit's top
    is the disk's active image, a snapshot merge's the image named by ``merges.py``."""

    def __init__(self, measure: Measure | None = None) -> None:
        self._measure = measure or qemu_img_measure
        self._needs: dict[tuple[str, str, str], int] = {}  # (vm, target, top path) -> need

    async def add(self, vm: str, targets: list[DriveInfo], tops: Mapping[str, str],
                  bounds: Mapping[str, int] | None = None) -> list[DriveInfo]:
        """``targets`` with ``job_need`` set on each commit base; ``tops`` maps a base's
        drive name (``vda[N]``) to the path of its commit's top, ``bounds`` to an upper
        bound used when the top cannot be measured. Needs of bases no longer reported for
        ``vm`` are dropped (a later job on the same base measures again)."""
        live = {(vm, t.drive, tops.get(t.drive, "")) for t in targets}
        for key in [k for k in self._needs if k[0] == vm and k not in live]:
            del self._needs[key]
        out: list[DriveInfo] = []
        for t in targets:
            top = tops.get(t.drive)
            if t.job != "commit" or not top:
                out.append(t)
                continue
            key = (vm, t.drive, top)
            if key not in self._needs:
                self._needs[key] = (await self._measure(top)
                                    or (bounds or {}).get(t.drive, 0))
                log.info("commit base measured", vm=vm, drive=t.drive, top=top,
                         need=self._needs[key], physical=t.physical)
            need = self._needs[key]
            out.append(dataclasses.replace(t, job_need=need) if need else t)
        return out


@dataclass(frozen=True)
class BackupSource:
    """The disk image a push-mode backup copies from (``<source>`` of the backed-up disk)."""

    path: str
    fmt: str  # <driver type=...>: raw | qcow2 (anything else is not measured)


class BackupNeeds:
    """A push-mode backup target's ``job_need``: what the backup can write into it, found
    once per job, so the monitor grows the target to it before the copy writes much (the
    copy runs at disk speed: a watermark lasts less than a threshold event's latency on a
    loaded host, and libvirt starts the job with on-error=report, so one ENOSPC ends it).

    The need is ``qemu-img measure -O qcow2`` of the backed-up disk's source, its chain
    followed: all the data a full backup copies; an incremental backup copies less, so this
    is a safe upper bound for it too. When the source cannot be measured (a network disk,
    an unknown format, qemu-img failing) the bound is the target's virtual size (the
    disk's capacity: the backup copies at most every guest-visible byte), which
    ``jobpolicy.need_size`` caps at the drive's cap. Not the job's ``disk_total`` (one more
    libvirt call per look for the same figure) nor the source's highest written offset
    (QEMU counts it from its own start: data written before it is missed).
    A pull-mode scratch gets no need (what it holds is the guest's writes during the
    backup: not measurable up front); it is left as it is.
    """

    def __init__(self, measure: FormatMeasure | None = None) -> None:
        self._measure = measure or qemu_img_measure
        self._needs: dict[tuple[str, str, str], int] = {}  # (vm, target, source) -> need

    async def add(self, vm: str, targets: list[DriveInfo],
                  sources: Mapping[str, BackupSource]) -> list[DriveInfo]:
        """``targets`` with ``job_need`` set on each backup target named in ``sources``
        (a push target's drive name ``vda[N]`` -> its disk's source). Needs of targets no
        longer reported for ``vm`` are dropped (a later backup measures again)."""
        live = {(vm, t.drive, sources[t.drive].path) for t in targets if t.drive in sources}
        for key in [k for k in self._needs if k[0] == vm and k not in live]:
            del self._needs[key]
        out: list[DriveInfo] = []
        for t in targets:
            source = sources.get(t.drive)
            if t.job != "backup" or source is None:
                out.append(t)
                continue
            key = (vm, t.drive, source.path)
            if key not in self._needs:
                measured = await self._measure(source.path, source.fmt) \
                    if source.path and source.fmt in FORMATS else None
                self._needs[key] = measured or t.capacity
                log.info("backup target need", vm=vm, drive=t.drive, source=source.path,
                         need=self._needs[key], measured=measured is not None,
                         physical=t.physical)
            out.append(dataclasses.replace(t, job_need=self._needs[key]))
        return out


def block_job_callback(tracker: DomainTracker) -> Callable[..., None]:
    """The ``VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2`` callback: ``cb(conn, dom, disk, type, status,
    opaque)``, on the event loop thread; it logs its own errors (libvirt would lose them)."""

    def on_block_job(_conn: Any, dom: Any, disk: str, job_type: int, status: int,
                     opaque: object) -> None:
        if opaque is None or opaque is not tracker.current:
            return
        try:
            vm = dom.name()
            log.info("libvirt block job", vm=vm, disk=disk, job_type=job_type, status=status)
            if vm in tracker.active:
                for event in block_job_events(vm, str(disk)[:64], job_type, status):
                    tracker.emit(event)
        except Exception:  # noqa: BLE001
            log.exception("libvirt block job callback failed")

    return on_block_job
