"""Sizing rules for block-job targets: pure functions, no I/O.

Pre-extension of a commit base (derivation): the merged base must hold the data of every
layer committed into it. ``qemu-img measure -O qcow2`` of the top (its chain followed)
gives the bytes a qcow2 with all of that data needs (``job_need``). Growing the base to
``need + watermark`` before the job writes much means the common commit needs no threshold
at all, and the base still has its usual watermark of room afterwards. The size is rounded up
to the extent and never passes the drive's cap (``policy.cap``), so a wrong measure cannot
grow a volume past what its virtual size allows. A push-mode backup's target gets its need
the same way (``libvirt_backend/jobs.py`` ``BackupNeeds``: the backed-up disk measured).
"""

from __future__ import annotations

from autoextend.monitor import policy
from autoextend.monitor.protocols import DriveInfo


def need_size(info: DriveInfo, pol: policy.DrivePolicy) -> int:
    """The size a job target should have before the job writes: 0 when nothing is known."""
    if info.job_need <= 0:
        return 0
    wanted = policy.round_up(info.job_need + policy.watermark(pol), pol.extent)
    return min(wanted, policy.cap(info.capacity, pol))


def short(info: DriveInfo, pol: policy.DrivePolicy) -> bool:
    """True when a job target is smaller than what its job is known to need."""
    return need_size(info, pol) > info.physical

