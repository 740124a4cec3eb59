"""This host's view of the pool's PVs, for its in-use record (issue 27: GROW-PV).

A GROW-PV (``pool grow``) may run ``pvresize`` only once every live host's kernel sees the
larger device: an LV extended into the new extents while a host still sees the old end
fails I/O there. So each host publishes, with its volumes in use, ``{pv uuid: bytes}``: the
size of each pool PV's device *as this host sees it* (``spm/inuse.py``: device views;
``spm/devicegate.py``: the SPM's judgement).

Cost. Which device holds which PV comes from one ``pvs`` (read-only) at start and then
every ``relook_s`` (30 s), or at once after a device could not be opened; the sizes are
read at every publish (2 s) by opening each device and seeking to its end (the kernel's
current size: a rescan, ``losetup -c`` or ``multipathd resize map`` shows at the next
publish), in a worker thread: no lvm2 command per publish.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anyio

from autoextend.clock import Clock
from autoextend.lvm.reader import LvmReader

RELOOK_S = 30.0


def device_sizes(paths: Mapping[str, str]) -> tuple[dict[str, int], bool]:
    """``{uuid: bytes}`` of the devices ``{uuid: path}`` (blocking: run in a thread), and
    whether every one could be read (a device that could not is left out)."""
    out: dict[str, int] = {}
    for uuid, path in paths.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            continue
        finally:
            os.close(fd)
        if size > 0:
            out[uuid] = size
    return out, len(out) == len(paths)


class DeviceViews:
    """The source an ``InUsePublisher`` calls: ``await views()`` -> ``{pv uuid: bytes}``
    for the PVs of ``vgs``. Raises what the ``pvs`` report raises (the publisher logs it
    and publishes no views: a GROW-PV then waits for this host)."""

    def __init__(self, reader: LvmReader, vgs: Sequence[str], clock: Clock, *,
                 relook_s: float = RELOOK_S) -> None:
        self._reader = reader
        self._vgs = tuple(vgs)
        self._clock = clock
        self.relook_s = relook_s
        self._paths: dict[str, str] | None = None
        self._due = 0.0

    async def _look(self) -> dict[str, str]:
        pvs = await self._reader.pvs()
        self._paths = {pv.uuid: pv.name for pv in pvs
                       if pv.vg in self._vgs and not pv.missing and pv.name}
        self._due = self._clock.now() + self.relook_s
        return self._paths

    async def __call__(self) -> dict[str, int]:
        paths = self._paths
        if paths is None or self._clock.now() >= self._due:
            paths = await self._look()
        sizes, complete = await anyio.to_thread.run_sync(device_sizes, paths)
        if not complete:
            self._paths = None  # a device went or moved: look again next time
        return sizes
