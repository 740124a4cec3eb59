"""Per-host views of a loop volume (issue 12, item 1): each lab "host" owns the loop devices it
attached, as each real host owns its dm table for an LV, and refreshes only those. Real loop
devices; the hazard test runs qemu-io against two views of one qcow2 volume."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from autoextend.errors import ConfigError
from autoextend.lvm import loop_backend as lb
from autoextend.lvm.errors import VolumeNotFound
from autoextend.lvm.factory import make_volume_backend
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.volumes import LocalAuthority, VolumeRef

from .support import EXTENT, MiB, release_under, unique_name


@dataclass
class Views:
    root: str
    spm: LoopVolumeBackend     # host A: may write (the SPM), has its own view
    other: LoopVolumeBackend   # host B: reads and refreshes only, its own view
    volume: VolumeRef


@pytest.fixture
async def views() -> AsyncIterator[Views]:
    root = tempfile.mkdtemp(prefix="autoextend-views-", dir="/var/tmp")
    try:
        a = LoopVolumeBackend(root, EXTENT, LocalAuthority(), host="host-a")
        b = LoopVolumeBackend(root, EXTENT, None, host="host-b")
        volume = VolumeRef(unique_name(), "disk")
        await a.create(volume, 16 * MiB)
        await b.attach(volume)
        yield Views(a.root, a, b, volume)
    finally:
        await release_under(root)
        await anyio.to_thread.run_sync(
            lambda: subprocess.run(["rm", "-rf", root], check=False))


def getsize64(device: str) -> int:
    out = subprocess.run(["blockdev", "--getsize64", device], check=True,
                         capture_output=True, text=True).stdout
    return int(out)


@pytest.mark.slow
async def test_each_host_refreshes_only_its_own_view(views: Views) -> None:
    a, b, volume = views.spm, views.other, views.volume
    dev_a, dev_b = a.device_path(volume), b.device_path(volume)
    assert dev_a != dev_b
    assert getsize64(dev_a) == getsize64(dev_b) == 16 * MiB

    result = await a.extend(volume, 40 * MiB)  # the SPM grows the file only
    assert result.size == 40 * MiB
    assert getsize64(dev_a) == getsize64(dev_b) == 16 * MiB

    assert await a.refresh(volume) == 40 * MiB
    assert getsize64(dev_a) == 40 * MiB
    assert getsize64(dev_b) == 16 * MiB  # B's view is stale until B refreshes
    assert await b.size(volume) == 16 * MiB

    assert await b.refresh(volume) == 40 * MiB
    assert getsize64(dev_b) == 40 * MiB


@pytest.mark.slow
async def test_a_machine_wide_backend_refreshes_every_view(views: Views) -> None:
    """The default (no host name: one host per machine) still owns every device of the file;
    this is the behaviour the views take away from a lab host."""
    machine = LoopVolumeBackend(views.root, EXTENT, LocalAuthority())
    await views.spm.extend(views.volume, 24 * MiB)
    assert await machine.refresh(views.volume) == 24 * MiB
    assert getsize64(views.spm.device_path(views.volume)) == 24 * MiB
    assert getsize64(views.other.device_path(views.volume)) == 24 * MiB


@pytest.mark.slow
async def test_detach_leaves_the_other_hosts_view(views: Views) -> None:
    a, b, volume = views.spm, views.other, views.volume
    dev_a = a.device_path(volume)
    await b.detach(volume)
    with pytest.raises(VolumeNotFound):
        b.device_path(volume)
    assert a.device_path(volume) == dev_a
    assert await b.size(volume) == 16 * MiB  # no device: the file's size
    dev_b = await b.attach(volume)  # a new attachment, recorded again
    assert b.device_path(volume) == dev_b != dev_a


@pytest.mark.slow
async def test_a_host_without_a_device_refreshes_nothing(views: Views) -> None:
    c = LoopVolumeBackend(views.root, EXTENT, None, host="host-c")
    await views.spm.extend(views.volume, 20 * MiB)
    assert await c.refresh(views.volume) == 20 * MiB  # the file's size
    assert getsize64(views.other.device_path(views.volume)) == 16 * MiB
    with pytest.raises(VolumeNotFound):
        c.device_path(views.volume)


@pytest.mark.slow
async def test_loop_views_reads_each_hosts_view_and_the_metadata_in_one_scan(
        views: Views) -> None:
    """The view audit's batch read (``loop_views``): this host's view and the file's size
    of every volume asked for, the same figures as ``size`` and ``metadata_size`` one at a
    time; a volume with no file is left out, one with no device here shows the file."""
    a, b, volume = views.spm, views.other, views.volume
    unattached = VolumeRef(volume.vg, "plain")
    await a.create(unattached, 8 * MiB, attach=False)
    gone = VolumeRef(volume.vg, "gone")
    await a.extend(volume, 40 * MiB)
    await a.refresh(volume)
    assert await a.loop_views([volume, unattached, gone]) == {
        volume: (40 * MiB, 40 * MiB), unattached: (8 * MiB, 8 * MiB)}
    assert await b.loop_views([volume]) == {volume: (16 * MiB, 40 * MiB)}  # B is stale
    assert (await b.size(volume), await b.metadata_size(volume)) == (16 * MiB, 40 * MiB)


@dataclass
class IoResult:
    returncode: int
    output: str


async def qemu_io(device: str, command: str, *, read_only: bool = False) -> IoResult:
    args = ["qemu-io", "-f", "qcow2", "-t", "none", *(["-r"] if read_only else []),
            "-c", command, device]
    with anyio.fail_after(120):
        result = await anyio.run_process(args, check=False)
    return IoResult(result.returncode,
                    (result.stdout + result.stderr).decode(errors="replace"))


def failed(result: IoResult) -> bool:
    text = result.output.lower()
    return result.returncode != 0 or "fail" in text or "error" in text


@pytest.mark.slow
async def test_a_stale_view_reads_zeros_where_the_data_is(views: Views) -> None:
    """The hazard of issue 12, shown with the lab model: host A extends and refreshes, writes
    past the old end; through host B's stale view the data reads as zeros without an error,
    and a write past the old end fails with ENOSPC. B's refresh makes it right."""
    a, b, volume = views.spm, views.other, views.volume
    dev_a, dev_b = a.device_path(volume), b.device_path(volume)
    await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", dev_a, "256M"])
    await a.extend(volume, 48 * MiB)
    await a.refresh(volume)
    # 14 MiB first, so that the next 8 MiB are allocated across and past the old 16 MiB end.
    for command in ("write -P 0x11 0 14M", "write -P 0xab 30M 8M"):
        result = await qemu_io(dev_a, command)
        assert not failed(result), result
    assert not failed(await qemu_io(dev_a, "read -P 0xab 30M 8M", read_only=True))

    stale = await qemu_io(dev_b, "read -P 0xab 36M 2M", read_only=True)
    assert failed(stale) and "pattern verification failed" in stale.output.lower(), stale
    zeros = await qemu_io(dev_b, "read -P 0x00 36M 2M", read_only=True)
    assert not failed(zeros), zeros  # silent zeros: no error where the data is
    write = await qemu_io(dev_b, "write -P 0xcd 100M 4M")
    assert "No space left on device" in write.output, write

    await b.refresh(volume)
    for command in ("read -P 0xab 30M 8M", "read -P 0x11 0 14M"):
        result = await qemu_io(dev_b, command, read_only=True)
        assert not failed(result), result


def test_views_ignore_stale_and_reused_records(tmp_path: Path) -> None:
    """A record counts only while the device is still that attachment: same backing file
    and same diskseq (a detached device re-attached by anyone gets a new diskseq)."""
    sys_block = tmp_path / "sys"
    for name, backing, seq in (("loop1", "/r/vg/lv", "7"), ("loop2", "/r/vg/lv", "9"),
                               ("loop3", "/r/vg/other", "3")):
        (sys_block / name / "loop").mkdir(parents=True)
        (sys_block / name / "loop" / "backing_file").write_text(backing + "\n")
        (sys_block / name / "diskseq").write_text(seq + "\n")
    view = tmp_path / "view"
    view.mkdir()
    (view / "loop1").write_text("7 /r/vg/lv\n")      # this host's attachment
    (view / "loop2").write_text("8 /r/vg/lv\n")      # re-attached since: not ours any more
    (view / "loop3").write_text("3 /r/vg/lv\n")      # now backs another file
    (view / "loop4").write_text("1 /r/vg/lv\n")      # detached
    (view / ".loop5.tmp").write_text("1 /r/vg/lv\n")  # a write in progress
    (view / "loop6").write_text("2 /r/vg/keep\n")   # another volume (detached)
    assert lb._view_devices(str(view), sys_block) == {"/dev/loop1": "/r/vg/lv"}
    lb._forget_views(str(view), "/r/vg/lv")
    assert sorted(p.name for p in view.iterdir()) == [".loop5.tmp", "loop6"]


def test_host_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LoopVolumeBackend(str(tmp_path), EXTENT, None, host="../etc")
    from autoextend import settings as settings_mod

    with pytest.raises(ConfigError):
        settings_mod.from_mapping({"volumes": {"loop_host": "a/b"}}, "<test>")
    ok = settings_mod.from_mapping(
        {"volumes": {"backend": "loop", "loop_root": str(tmp_path), "loop_host": "lab-host-1"}},
        "<test>")
    assert ok.volumes.loop_host == "lab-host-1"
    backend = make_volume_backend(ok.volumes, ok.lvm, None)
    assert isinstance(backend, LoopVolumeBackend)
    assert backend.view_dir == os.path.join(tmp_path, "@views", "lab-host-1")
