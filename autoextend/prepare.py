"""Refresh before start: make this host's views of volumes at least their metadata size
before a guest runs on them (issue 28 item 1, ``autoextend volume prepare``).

Why: a volume extended by another host (through the SPM, or locally before the guest moved)
while this host kept the LV active at its old size is a *stale view*. A guest started on it
reads zeros past the old end, with no error, and its writes there fail. vdsm refreshes every
LV it activates for the same reason.

What "prepared" means: after :func:`prepare_view`, this host's view of the volume is at least
the size the metadata gave *at the start of the call*. The view is refreshed only when it is
smaller (a refresh of a view that is big enough would cost an ``lvchange`` for nothing, and
needs device-mapper). A view still smaller after :data:`REFRESH_ATTEMPTS` refreshes is
:class:`StaleView`: the caller (the libvirt hook) fails the start, since a stale view loses
data.

A volume in use here by a VM that migrates *out* is never refreshed (the source's view is
frozen until the migration ends, see ``monitor/migration.py``): the request is refused with
:class:`ViewFrozen`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from autoextend.errors import VolumeError
from autoextend.logs import get_logger
from autoextend.volumes import ReportsMetadataSize, VolumeBackend, VolumeRef

log = get_logger("prepare")

REFRESH_ATTEMPTS = 3
RETRY_PAUSE_S = 0.2   # between refreshes of a view that stayed smaller (udev, a slow table load)
MAX_TARGETS = 256     # volumes or paths in one request: far beyond any domain's disks


class StaleView(VolumeError):
    """This host's view of the volume stays smaller than its metadata size after refreshing."""

    def __init__(self, volume: VolumeRef, view: int, metadata: int) -> None:
        self.volume = volume
        self.view = view
        self.metadata = metadata
        super().__init__(f"{volume}: this host sees {view} bytes after refreshing, the metadata"
                         f" says {metadata}: the view is stale; do not start a guest on it")


class ViewFrozen(VolumeError):
    """The volume is used here by a VM migrating out: its view must not be refreshed now."""

    def __init__(self, volume: VolumeRef, vm: str) -> None:
        self.volume = volume
        self.vm = vm
        super().__init__(f"{volume}: in use by VM {vm}, which migrates out of this host; its"
                         " view is frozen until the migration ends")


@dataclass(frozen=True)
class PreparedView:
    volume: VolumeRef
    metadata_size: int   # what the metadata said when the request came
    before: int          # what this host saw then
    size: int            # what this host sees now (>= metadata_size)

    @property
    def refreshed(self) -> bool:
        return self.before < self.metadata_size

    def as_dict(self) -> dict[str, Any]:
        return {"volume": str(self.volume), "metadata_size": self.metadata_size,
                "before": self.before, "size": self.size, "refreshed": self.refreshed}


async def prepare_view(backend: VolumeBackend, volume: VolumeRef) -> PreparedView:
    """Refresh this host's view of ``volume`` until it is at least its metadata size.

    Raises:
        VolumeNotFound: no such volume.
        StaleView: still smaller after :data:`REFRESH_ATTEMPTS` refreshes.
        VolumeError: the backend cannot report metadata sizes, or a refresh failed.
    """
    if not isinstance(backend, ReportsMetadataSize):
        raise VolumeError(f"{volume}: this volume backend cannot report metadata sizes")
    metadata = await backend.metadata_size(volume)
    before = seen = await backend.size(volume)
    for attempt in range(REFRESH_ATTEMPTS):
        if seen >= metadata:
            break
        if attempt:
            await anyio.sleep(RETRY_PAUSE_S)
        seen = await backend.refresh(volume)
    if seen < metadata:
        raise StaleView(volume, seen, metadata)
    prepared = PreparedView(volume, metadata, before, seen)
    if prepared.refreshed:
        log.warning("stale view refreshed before start", volume=str(volume), before=before,
                    size=seen, metadata_size=metadata)
    else:
        log.info("view up to date before start", volume=str(volume), size=seen)
    return prepared


def string_list(request: dict[str, Any], key: str) -> list[str]:
    """``request[key]`` as a list of at most :data:`MAX_TARGETS` short strings (ValueError)."""
    value = request.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 4096
                                              for v in value):
        raise ValueError(f"volume_prepare: \"{key}\" must be a list of strings")
    if len(value) > MAX_TARGETS:
        raise ValueError(f"volume_prepare: at most {MAX_TARGETS} {key}")
    return value
