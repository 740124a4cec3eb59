"""Resolve the sizing policy for one drive from the defaults and ``[[policy.overrides]]``."""

from __future__ import annotations

import math

from autoextend.monitor.config import PolicyOverride, PolicySettings
from autoextend.monitor.policy import DrivePolicy, MiB
from autoextend.monitor.protocols import DriveInfo
from autoextend.volumes import VolumeRef


def matches(override: PolicyOverride, info: DriveInfo, volume: VolumeRef) -> bool:
    return (
        (override.vg is None or override.vg == volume.vg)
        and (override.lv is None or override.lv == volume.lv)
        and (override.vm is None or override.vm == info.vm)
        and (override.drive is None or override.drive == info.drive)
    )


def resolve(settings: PolicySettings, info: DriveInfo, volume: VolumeRef) -> DrivePolicy:
    """Defaults, then every matching override in order (later entries win per key)."""
    chunk = settings.chunk_mib
    utilization = settings.utilization_percent
    cap_factor = settings.cap_factor
    for o in settings.overrides:
        if not matches(o, info, volume):
            continue
        chunk = o.chunk_mib if o.chunk_mib is not None else chunk
        utilization = o.utilization_percent if o.utilization_percent is not None else utilization
        cap_factor = o.cap_factor if o.cap_factor is not None else cap_factor
    chunk_bytes = chunk * MiB
    if info.job:
        # A block job's target gets a larger chunk while the job runs (vdsm doubles it for a
        # mirror's replica): a job writes at full speed, faster than most guests.
        chunk_bytes = math.ceil(chunk_bytes * settings.job_chunk_factor)
    return DrivePolicy(chunk_bytes, utilization, cap_factor, settings.extent_mib * MiB)
