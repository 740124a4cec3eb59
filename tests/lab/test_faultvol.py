"""The chaos soak's fault point on a guest's own volume (``autoextend/lab/faultvol.py``): a
loop volume whose data goes through the fault file system. Real FUSE, bind mount, loop
devices of two lab hosts, the loop backend's extend and refresh."""

from __future__ import annotations

import errno
import mmap
import os
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from autoextend.lab.faultfs import fault_fs
from autoextend.lab.faultvol import create_fault_volume
from autoextend.lvm import loopdev
from autoextend.lvm.loop_backend import LoopVolumeBackend, attached_devices, vg_used
from autoextend.volumes import LocalAuthority, VolumeRef

pytestmark = pytest.mark.slow  # FUSE, bind mounts, loop devices
MiB = 1 << 20
BLOCK = 4096


def direct_io(device: str, offset: int, write: bool) -> int:
    """One 4 KiB O_DIRECT read or write on ``device`` (as QEMU's cache.direct=on does);
    0 or the errno."""
    buf = mmap.mmap(-1, BLOCK)
    buf.write(b"\x5a" * BLOCK)
    fd = os.open(device, (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT)
    try:
        (os.pwritev if write else os.preadv)(fd, [buf], offset)
        return 0
    except OSError as err:
        return err.errno or -1
    finally:
        os.close(fd)


def mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


async def test_a_fault_volume_fails_on_every_view_and_still_extends(lab_tmp_path: Path) -> None:
    root = lab_tmp_path / "volumes"
    machine = LoopVolumeBackend(str(root), 4 * MiB, LocalAuthority())
    spm = LoopVolumeBackend(str(root), 4 * MiB, LocalAuthority(), host="h1")
    other = LoopVolumeBackend(str(root), 4 * MiB, None, host="h2")
    volume = VolumeRef("demo", "g-disk")
    async with fault_fs(lab_tmp_path / "fs", backing=lab_tmp_path / "data") as fs:
        async with AsyncExitStack() as stack:
            fv = await create_fault_volume(machine, fs, stack, volume, 16 * MiB)
            assert mounted(fv.path)
            a, b = await spm.attach(volume), await other.attach(volume)
            assert a != b
            # the kernel names the bind mount: the loop backend knows both views as ours
            assert attached_devices()[a] == attached_devices()[b] == fv.path
            assert spm.lookup(a) == other.lookup(b) == volume
            assert direct_io(a, 0, write=True) == 0

            fv.fail()
            assert direct_io(a, BLOCK, write=True) == errno.EIO
            assert direct_io(b, 0, write=False) == errno.EIO
            # the "metadata" still works: the SPM extends, host h2 refreshes its view
            assert (await spm.extend(volume, 24 * MiB)).size == 24 * MiB
            assert await other.refresh(volume) == 24 * MiB
            assert loopdev.size_of(a) == 16 * MiB  # h1 has not refreshed
            assert await anyio.to_thread.run_sync(vg_used, str(root / "demo")) == 24 * MiB

            fv.heal()
            assert direct_io(b, 20 * MiB, write=True) == 0
            assert direct_io(a, 0, write=False) == 0
            assert os.stat(fs.backing / fv.name).st_size == 24 * MiB
        # removed: no loop device over it, no mount, no files
        assert fv.path not in attached_devices().values()
        assert not mounted(fv.path)
        assert not os.path.exists(fv.path) and not (fs.backing / fv.name).exists()
