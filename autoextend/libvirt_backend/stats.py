"""Block stats + disk facts -> :class:`DriveInfo` (pure; no libvirt calls).

``domainListGetStats([dom], VIR_DOMAIN_STATS_BLOCK, VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING)``
returns one flat dict per domain; with ``BACKING`` every image of every chain is an entry::

    block.count = 2
    block.0.name = "vda"   block.0.backingIndex = 1   block.0.path = "/dev/loop3"
    block.0.allocation = 1310720   (highest written offset, i.e. how full the device is)
    block.0.capacity = 1073741824  (virtual size the guest sees)
    block.0.physical = 134217728   (device size)
    block.0.threshold = 100663296  (absent or 0: none armed)
    block.1.name = "vda"   block.1.backingIndex = 2   ...      (a backing image)

The top image of a disk is the entry whose ``backingIndex`` equals the ``index`` of the
disk's ``<source>`` in the live XML. An entry that lacks a number the monitor needs, or has
capacity 0, is skipped with a reason rather than guessed at. libvirt reports sizes as
unsigned 64-bit numbers: one of 2**63 or more is no real size and counts as lacking; a path
with a NUL byte or over 4096 characters is no path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoextend.libvirt_backend.domxml import DiskFacts, indexed_name
from autoextend.monitor.protocols import DriveInfo


class StatsError(ValueError):
    """The stats as a whole are unusable (no ``block.count``)."""


@dataclass(frozen=True)
class DrivesFound:
    drives: list[DriveInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (drive or target, why)


#: Largest size or offset taken from the stats (what a block device and lseek can mean).
MAX_SIZE = (1 << 63) - 1
MAX_PATH = 4096
MAX_ENTRIES = 100_000  # images over all chains of one domain


def _uint(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
        return None
    return value


def clean_path(value: object) -> bool:
    return isinstance(value, str) and "\x00" not in value and len(value) <= MAX_PATH


def _entries_for(stats: Mapping[str, Any], count: int, target: str) -> list[int]:
    return [i for i in range(count) if stats.get(f"block.{i}.name") == target]


def _top_entry(stats: Mapping[str, Any], entries: list[int], index: int | None) -> int | None:
    """The entry of the top image: by backing index if known, else the first (libvirt lists
    a chain top first)."""
    if index is None:
        return entries[0] if entries else None
    for i in entries:
        if _uint(stats, f"block.{i}.backingIndex") == index:
            return i
    return None


def drives_from_stats(vm: str, stats: Mapping[str, Any], disks: list[DiskFacts]) -> DrivesFound:
    """The monitorable drives of ``vm``: the top image of each writable qcow2 block disk.

    Raises:
        StatsError: there is no usable ``block.count`` at all.
    """
    count = _uint(stats, "block.count")
    if count is None or count > MAX_ENTRIES:
        raise StatsError("block stats lack a usable block.count")
    found = DrivesFound()
    for disk in disks:
        if not disk.monitorable:
            continue
        entries = _entries_for(stats, count, disk.target)
        i = _top_entry(stats, entries, disk.index)
        if i is None:
            found.skipped.append((disk.target, "no block stats for its top image"))
            continue
        index = disk.index if disk.index is not None else _uint(stats, f"block.{i}.backingIndex")
        if index is None:
            found.skipped.append((disk.target, "no image index in the XML or the stats"))
            continue
        name = indexed_name(disk.target, index)
        numbers = {key: _uint(stats, f"block.{i}.{key}")
                   for key in ("allocation", "physical", "capacity")}
        missing = [key for key, value in numbers.items() if value is None]
        if missing:
            found.skipped.append((name, "stats lack " + ", ".join(missing)))
            continue
        capacity, allocation, physical = (
            numbers["capacity"], numbers["allocation"], numbers["physical"])
        assert capacity is not None and allocation is not None and physical is not None
        if capacity == 0:
            found.skipped.append((name, "capacity is 0"))
            continue
        path = stats.get(f"block.{i}.path")
        path = path if isinstance(path, str) and path else disk.path
        if not clean_path(path):
            found.skipped.append((name, "path with a NUL byte or too long"))
            continue
        found.drives.append(
            DriveInfo(
                vm=vm,
                drive=name,
                node=name,
                path=path,
                capacity=capacity,
                allocation=allocation,
                physical=physical,
                threshold=_uint(stats, f"block.{i}.threshold") or 0,
                # libvirt's "enospace" is QEMU's werror=enospc (DriveInfo's vocabulary)
                error_policy="enospc" if disk.error_policy == "enospace" else disk.error_policy,
            )
        )
    return found
