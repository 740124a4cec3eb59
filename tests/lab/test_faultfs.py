"""The lab's EIO fault source: a FUSE file system whose files fail on demand."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import anyio
import pytest

from autoextend.lab.faultfs import fault_fs, is_mounted

pytestmark = pytest.mark.slow  # mounts FUSE (make unit runs none)
BLOCK = 4096


def direct_io(path: Path, write: bool) -> int:
    """One 4 KiB O_DIRECT read or write at offset 0 (as QEMU's cache=none and the probe do);
    0 or the errno."""
    buf = mmap.mmap(-1, BLOCK)
    buf.write(b"\x5a" * BLOCK)
    fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT)
    try:
        if write:
            os.pwritev(fd, [buf], 0)
        else:
            os.preadv(fd, [buf], 0)
        return 0
    except OSError as err:
        return err.errno or -1
    finally:
        os.close(fd)


async def test_fails_with_eio_while_flagged_and_recovers(lab_tmp_path: Path) -> None:
    async with fault_fs(lab_tmp_path / "ffs") as fs:
        image = await anyio.to_thread.run_sync(fs.create, "a.img", 1 << 20)
        assert os.listdir(fs.mountpoint) == ["a.img"]
        assert direct_io(image, write=True) == 0
        fs.fail("a.img")
        assert os.listdir(fs.mountpoint) == ["a.img"]  # the flag file is not shown
        assert direct_io(image, write=True) == errno.EIO
        assert direct_io(image, write=False) == errno.EIO
        fs.heal("a.img")
        assert direct_io(image, write=False) == 0
        assert (fs.backing / "a.img").read_bytes()[:BLOCK] == b"\x5a" * BLOCK
        mountpoint = fs.mountpoint
    assert not is_mounted(mountpoint)


async def test_tagged_mounts_fail_one_path_or_every_path(lab_tmp_path: Path) -> None:
    """Two hosts' paths to one shared file (two tagged mounts of one backing directory, as
    the chaos soak gives its hosts the metadata area): one path fails alone, or both."""
    backing = lab_tmp_path / "shared"
    async with fault_fs(lab_tmp_path / "p1", backing=backing, tag="h1") as one, \
            fault_fs(lab_tmp_path / "p2", backing=backing, tag="h2") as two:
        await anyio.to_thread.run_sync(one.create, "meta", 1 << 20)
        a, b = one.path("meta"), two.path("meta")
        assert direct_io(a, write=True) == 0
        one.fail("meta", this_mount=True)
        assert direct_io(a, write=False) == errno.EIO
        assert direct_io(b, write=False) == 0  # the other path still works
        one.heal("meta", this_mount=True)
        two.fail("meta")  # untagged: the file itself, on every path
        assert direct_io(a, write=False) == errno.EIO
        assert direct_io(b, write=False) == errno.EIO
        two.heal("meta")
        assert direct_io(a, write=False) == 0 and direct_io(b, write=False) == 0
        with pytest.raises(ValueError):
            await fault_fs_without_tag_fail(lab_tmp_path)


async def fault_fs_without_tag_fail(directory: Path) -> None:
    async with fault_fs(directory / "plain") as fs:
        fs.fail("x", this_mount=True)
