"""A disk's I/O limits over libvirt: ``blockIoTune`` read, ``setBlockIoTune`` set (live).

libvirt names QEMU's throttle fields its own way, one to one (``write_bytes_sec`` is QMP's
``bps_wr``, ``group_name`` its ``group``); the neutral :class:`~autoextend.monitor.
protocols.IoLimits` uses QMP's. A disk is named by its target (``vda``): the limits are the
device's, whatever image is on top, so the indexed drive name (``vda[3]``) loses its index.
"""

from __future__ import annotations

from typing import Any

from autoextend.monitor.protocols import IO_LIMIT_FIELDS, DriveInfo, IoLimits

_BASE = {"bps": "total_bytes_sec", "bps_rd": "read_bytes_sec", "bps_wr": "write_bytes_sec",
         "iops": "total_iops_sec", "iops_rd": "read_iops_sec", "iops_wr": "write_iops_sec"}

#: QMP field name -> libvirt's typed parameter name.
LIBVIRT_NAME: dict[str, str] = {
    **_BASE,
    **{f"{k}_max": f"{v}_max" for k, v in _BASE.items()},
    **{f"{k}_max_length": f"{v}_max_length" for k, v in _BASE.items()},
    "iops_size": "size_iops_sec",
}
assert set(LIBVIRT_NAME) == set(IO_LIMIT_FIELDS)


class IoTuneError(ValueError):
    """``blockIoTune`` answered something that is not a map of sizes."""


def target_of(drive: DriveInfo) -> str:
    """The disk target a guest drive's limits are set on (``vda[3]`` -> ``vda``)."""
    if drive.job:
        raise ValueError(f"{drive.drive} is a block job's target, not a guest disk")
    return drive.drive.split("[", 1)[0]


def limits_from(params: dict[str, Any]) -> IoLimits:
    """The neutral limits from ``blockIoTune``'s answer (fields it lacks are 0)."""
    fields: dict[str, int] = {}
    for ours, theirs in LIBVIRT_NAME.items():
        value = params.get(theirs, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise IoTuneError(f"{theirs} is not a size: {value!r}")
        fields[ours] = value
    group = params.get("group_name", "") or ""
    if not isinstance(group, str):
        raise IoTuneError(f"group_name is not a string: {group!r}")
    return IoLimits.of(fields, group)


def params_of(limits: IoLimits) -> dict[str, Any]:
    """``setBlockIoTune``'s parameters that set exactly ``limits`` (every field, 0 for
    none; the group only when there is one: libvirt keeps the group otherwise)."""
    params: dict[str, Any] = {theirs: limits.get(ours) for ours, theirs in LIBVIRT_NAME.items()}
    if limits.group:
        params["group_name"] = limits.group
    return params
