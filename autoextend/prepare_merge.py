"""Grow a snapshot merge's base before the merge starts (issue 29 item 3,
``autoextend volume prepare-merge VM DRIVE [--base N]``).

Why: libvirt starts every block commit with ``on-error=report``, so one ENOSPC on the base
ends the merge, and a non-active commit gives no event when it starts: a base too small for
what the merge copies into it can fill before anything can react. vdsm measures and extends
the base before it starts any merge; this is that step, for a management that calls it before
``virsh blockcommit``.

What "prepared" means: when the call returns, the base's volume is at least the size the
merge needs, with the rule the monitor uses for a commit base (``monitor/jobpolicy.py:
need_size``): ``qemu-img measure`` of the top (its chain followed down through the base:
the top's data plus the base's; when QEMU's locks refuse it, the sum of the merged images'
device sizes, ``merges.with_bound``), plus the watermark, rounded up to the extent and capped at
the drive's cap. The growth goes through the service's extender (the VG reserve, or the SPM in
mailbox mode), like every other extension. The libvirt backend also remembers the pair, so
the commit that follows is watched with that base (``libvirt_backend/merges.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from autoextend.errors import AutoextendError
from autoextend.libvirt_backend.merges import MergePair
from autoextend.logs import get_logger
from autoextend.monitor import jobpolicy
from autoextend.monitor.protocols import DriveInfo, Extender
from autoextend.monitor.vm import PolicyResolver
from autoextend.qemuimg import Measure
from autoextend.volumes import VolumeRef

log = get_logger("prepare")


class MergeChains(Protocol):
    """What prepare-merge asks the hypervisor (the libvirt backend has it)."""

    async def merge_base(self, vm: str, drive: str,
                         base: int | None) -> tuple[MergePair, DriveInfo]: ...

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None: ...


class MergeNotPrepared(AutoextendError):
    """The base could not be brought to what the merge needs: do not start the merge."""

    def __init__(self, vm: str, base: str, reason: str) -> None:
        self.vm = vm
        self.base = base
        self.reason = reason
        super().__init__(f"VM {vm[:64]}: base {base}: {reason}; do not start the merge")


@dataclass(frozen=True)
class PreparedMerge:
    vm: str
    top: str            # vda[N]
    base: str           # vda[M]
    volume: VolumeRef   # the base's
    need: int           # qemu-img measure of the top (or the bound, see ``estimated``)
    before: int         # the base's size when the call came
    size: int           # its size now (>= target, or the cap)
    target: int         # what the rule asked for
    dry_run: bool = False
    estimated: bool = False  # the measure failed: ``need`` is ``MergePair.bound``

    @property
    def extended(self) -> bool:
        return self.size > self.before

    def as_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "top": self.top, "base": self.base, "volume": str(self.volume),
                "need": self.need, "before": self.before, "size": self.size,
                "target": self.target, "extended": self.extended, "dry_run": self.dry_run,
                "estimated": self.estimated}


async def prepare_merge(chains: MergeChains, extender: Extender, policy_for: PolicyResolver,
                        measure: Measure, request: tuple[str, str, int | None], *,
                        dry_run: bool = False) -> PreparedMerge:
    """Grow the base of the merge ``request`` = (vm, drive, base index or None) names to
    what the merge needs (see the module docstring).

    Raises:
        MergeChoiceError: no such drive or image, or a base autoextend does not grow.
        VmNotFound, HypervisorError: the VM does not run here, libvirt failed.
        MergeNotPrepared: the base is no volume of ours, measuring or extending failed.
    """
    vm, drive, base = request
    pair, info = await chains.merge_base(vm, drive, base)
    volume = chains.volume_of(info)
    if volume is None:
        raise MergeNotPrepared(vm, pair.base_name,
                               f"{info.path} is not a volume of this pool")
    measured = await measure(pair.top.path)
    need = measured or pair.bound
    if not need:
        raise MergeNotPrepared(vm, pair.base_name, f"qemu-img measure of {pair.top_name}"
                               f" ({pair.top.path}) failed (see the service log) and the"
                               " block stats give no bound")
    info = dataclasses.replace(info, job_need=need)
    target = jobpolicy.need_size(info, policy_for(info, volume))
    done = PreparedMerge(vm, pair.top_name, pair.base_name, volume, need, info.physical,
                         info.physical, target, dry_run, estimated=not measured)
    if target <= info.physical or dry_run:
        log.info("merge base has room" if target <= info.physical else
                 "dry-run: would extend the merge base", vm=vm, drive=pair.base_name,
                 volume=str(volume), need=need, size=info.physical, target=target)
        return done
    outcome = await extender.extend(volume, target)
    if not outcome.ok or outcome.size < target:
        raise MergeNotPrepared(vm, pair.base_name, f"extending {volume} to {target} bytes"
                               f" failed: {outcome.reason or outcome.kind.value}")
    log.info("merge base extended before the merge", vm=vm, drive=pair.base_name,
             volume=str(volume), need=need, before=info.physical, size=outcome.size)
    return dataclasses.replace(done, size=outcome.size)


def merge_request(request: dict[str, Any]) -> tuple[str, str, int | None]:
    """The control request's (vm, drive, base) (ValueError on a bad one)."""
    vm, drive, base = request.get("vm"), request.get("drive"), request.get("base")
    if not isinstance(vm, str) or not 0 < len(vm) <= 256:
        raise ValueError("merge_prepare: \"vm\" must be a VM name")
    if not isinstance(drive, str) or not 0 < len(drive) <= 80:
        raise ValueError("merge_prepare: \"drive\" must be a drive name (vda or vda[N])")
    if base is not None and (isinstance(base, bool) or not isinstance(base, int)
                             or not 0 <= base < 1 << 31):
        raise ValueError("merge_prepare: \"base\" must be an image index (the N of vda[N])")
    return vm, drive, base
