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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from autoextend.clock import Clock
from autoextend.errors import AutoextendError, VolumeError
from autoextend.logs import get_logger
from autoextend.volumes import VolumeBackend, VolumeRef

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
        VolumeError: a refresh failed.
    """
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


async def prepare_targets(backend: VolumeBackend, volumes: list[VolumeRef], paths: list[str]
                          ) -> dict[str, Any]:
    """``autoextend volume prepare --direct``: :func:`prepare_view` for each volume and each
    path that is one of ``backend``'s, in this process, without the service (which may be
    down or frozen). What the service adds is left out: it knows which VMs migrate out of
    this host (their views are frozen), so this is for a migration's destination only, after
    the switchover (docs/migration.md). The service's reply shape."""
    targets = set(volumes)
    skipped: list[str] = []
    for path in paths:
        found = backend.lookup(path)
        if found is None:
            skipped.append(path)
        else:
            targets.add(found)
    done = [await prepare_view(backend, volume) for volume in sorted(targets)]
    return {"volumes": [p.as_dict() for p in done], "skipped": skipped}


def stale_at_start(done: list[PreparedView]) -> int:
    """How many of a start's views were stale (refreshed): the ``start`` count of
    ``autoextend_stale_views_total`` (the service counts it; ``monitor/views.py`` counts the
    appearance check and the audit)."""
    return sum(1 for p in done if p.refreshed)


def string_list(request: dict[str, Any], key: str) -> list[str]:
    """``request[key]`` as a list of at most :data:`MAX_TARGETS` short strings (ValueError)."""
    value = request.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 4096
                                              for v in value):
        raise ValueError(f"volume_prepare: \"{key}\" must be a list of strings")
    if len(value) > MAX_TARGETS:
        raise ValueError(f"volume_prepare: at most {MAX_TARGETS} {key}")
    return value


WATCH_INTERVAL_S = 0.25   # how often an incoming VM's views are checked
WATCH_MAX_S = 6 * 3600.0  # a watch ends after this even if the VM never settles


@dataclass
class _Watch:
    vm: str
    volumes: tuple[VolumeRef, ...]
    until: float


class IncomingWatch:
    """Keeps an incoming VM's views at least at their metadata size until the VM has arrived.

    Why: during a live migration the source extends without refreshing its own view, and
    libvirt resumes the guest on the destination at the switchover, before the destination's
    autoextend can read the incoming domain (libvirt holds its job lock), so the destination's
    view must already be right when the guest runs. The hook's ``migrate begin`` refresh is
    too early for an extension made during the migration; this watch, started by it, checks
    the views every :data:`WATCH_INTERVAL_S` (a ``stat`` and a sysfs read on the loop
    backend; ``lvs --readonly`` on lvm) and refreshes a smaller one at once. Refreshing the
    destination early is always safe: no guest runs there yet.

    Limit: an extension made on the source less than one interval before the switchover can
    still reach the destination after its guest runs (then the guest pauses there on ENOSPC).

    The watch for a VM ends when ``settled(vm)`` says the monitor has taken it over (it runs
    here, its arrival refresh and re-arm have run), when one of its volumes is frozen here
    (a VM migrating out of this host uses it: never refresh then), or after
    :data:`WATCH_MAX_S`.
    """

    def __init__(self, backend: VolumeBackend, settled: Callable[[str], bool],
                 frozen: Callable[[], dict[VolumeRef, str]], clock: Clock) -> None:
        self._backend = backend
        self._settled = settled
        self._frozen = frozen
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        self._wake = anyio.Event()
        self.refreshes = 0  # views found smaller than their metadata and refreshed

    def watch(self, vm: str, volumes: list[VolumeRef]) -> None:
        self._watches[vm] = _Watch(vm, tuple(volumes), self._clock.now() + WATCH_MAX_S)
        log.info("watching an incoming VM's views until it arrives", vm=vm,
                 volumes=[str(v) for v in volumes])
        self._wake.set()

    def watching(self) -> list[str]:
        return sorted(self._watches)

    async def run(self) -> None:
        while True:
            if not self._watches:
                await self._wake.wait()
                self._wake = anyio.Event()
            for watch in list(self._watches.values()):
                await self._check(watch)
            await self._clock.sleep(WATCH_INTERVAL_S)

    async def _check(self, watch: _Watch) -> None:
        frozen = self._frozen()
        if (self._settled(watch.vm) or self._clock.now() >= watch.until
                or any(v in frozen for v in watch.volumes)):
            self._watches.pop(watch.vm, None)
            log.info("incoming VM watch ended", vm=watch.vm, settled=self._settled(watch.vm),
                     frozen=sorted(frozen[v] for v in watch.volumes if v in frozen))
            return
        for volume in watch.volumes:
            try:
                done = await prepare_view(self._backend, volume)
            except AutoextendError as exc:
                log.warning("incoming VM's view not checked", vm=watch.vm,
                            volume=str(volume), error=str(exc))
                continue
            if done.refreshed:
                self.refreshes += 1
