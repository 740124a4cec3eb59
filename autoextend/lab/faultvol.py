"""A loop volume whose data can fail with EIO: the chaos soak's fault point on a guest's
own volume.

The volume's data lives in a fault file system (``lab/faultfs.py``); its path in the loop
VG (``<root>/<vg>/<lv>``) is a bind mount of that file. Everything that opens the path goes
through the fault file system: each host's loop view (``losetup`` opens the path; the
kernel names the bind mount as its backing file, so the loop backend's views, sizes and
refreshes work unchanged), the SPM's extend (a truncate) and ``qemu-img check``. While the
fault is set, every read and write of the data fails with EIO (sizes and truncates still
work, as an LV's metadata does while its data path fails); :meth:`FaultVolume.heal` ends it.

Loop over a FUSE file, seen here (Linux 6.1): the loop device's default buffered I/O and
``--direct-io=on`` both reach the file system on every request (it is mounted
``direct_io``, so no page cache sits between), and an EIO from the file system is the
loop request's error: QEMU's ``cache.direct=on`` write on ``/dev/loopN`` fails with EIO
and its ``werror=stop`` pauses the guest.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio

from autoextend.lab import proc
from autoextend.lab.errors import CommandError
from autoextend.lab.faultfs import FaultFs
from autoextend.logs import get_logger
from autoextend.lvm import loopdev
from autoextend.lvm.loop_backend import LoopVolumeBackend, attached_devices
from autoextend.volumes import VolumeRef

log = get_logger("lab.faultvol")


@dataclass(frozen=True)
class FaultVolume:
    """One volume on the fault file system ``fs``: ``name`` is its file there."""

    volume: VolumeRef
    path: str  # <root>/<vg>/<lv>: the bind mount every host opens
    fs: FaultFs
    name: str

    def fail(self) -> None:
        """From the next request on, every read and write of the volume fails with EIO."""
        self.fs.fail(self.name)

    def heal(self) -> None:
        self.fs.heal(self.name)


def _make(fs: FaultFs, name: str, size: int, path: str) -> None:
    fs.create(name, size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)  # the mount point


async def create_fault_volume(volumes: LoopVolumeBackend, fs: FaultFs, stack: AsyncExitStack,
                              volume: VolumeRef, size: int) -> FaultVolume:
    """A ``size``-byte volume of ``volumes``' root whose data is ``fs``'s file; not attached
    (attach it per host with ``LoopVolumeBackend.attach``). Its removal is registered on
    ``stack``: every loop device over it detached, the bind mount and both files gone.

    Raises:
        CommandError: the bind mount failed.
        FileExistsError: the volume exists.
    """
    name = f"{volume.vg}-{volume.lv}"
    path = volumes.file_path(volume)
    await anyio.to_thread.run_sync(_make, fs, name, size, path)
    fv = FaultVolume(volume, path, fs, name)
    stack.push_async_callback(_remove, fv)
    await proc.run(["mount", "--bind", str(fs.path(name)), path])
    return fv


async def _remove(fv: FaultVolume) -> None:
    with anyio.CancelScope(shield=True):
        fv.heal()
        for device in [d for d, b in attached_devices().items() if b == fv.path]:
            try:
                await loopdev.detach(device)
            except loopdev.LoopError as err:
                log.warning("fault volume detach failed", volume=str(fv.volume),
                            device=device, error=str(err))
        try:
            await proc.run(["umount", "-l", fv.path])
        except CommandError as err:
            log.warning("fault volume unmount failed", volume=str(fv.volume), error=str(err))

        def unlink() -> None:
            for p in (fv.path, str(fv.fs.backing / fv.name)):
                try:
                    os.unlink(p)
                except OSError as err:
                    log.warning("fault volume file not removed", path=p, error=str(err))

        await anyio.to_thread.run_sync(unlink)
