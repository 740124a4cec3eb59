"""Issue 29 item 4: a push-mode backup through libvirt (``virDomainBackupBegin`` with a
``<target type='block'>`` on a thin volume) whose target fills is extended, and the backup
completes.

A push backup copies the disk into its target as fast as it can read the disk, and libvirt
9.0 gives it no bandwidth option: from a loop device it ends before any look. So the disk
here is a raw file on the lab's FUSE file system (``lab/faultfs.py``) with its slow flag
on: each read of it waits, and the backup copies 48 MiB of data at a few MiB/s into a
16 MiB target (chunk 8 MiB). The domain is started paused: the backup job runs in QEMU
whether the guest runs or not, and nothing else writes the disk.

- With the backend's backup watch (``libvirt_backend/backups.py``): the target (``vda[N]``
  from the backup XML) is watched like any job target, with a need (``jobs.BackupNeeds``:
  ``qemu-img measure`` of the disk): its first extension already takes it past the disk's
  data, so no threshold event has to win a race with the copy; the backup completes
  (libvirt's completed job: COMPLETED, operation BACKUP), ``qemu-img check`` of the target
  is clean and ``qemu-img compare`` finds its content equal to the disk's.
- Negative control (the watch off): the target stays at 16 MiB and the backup fails
  (QEMU's backup job stops on the target's ENOSPC; libvirt's completed job: FAILED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.lab import proc
from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.faultfs import FaultFs, fault_fs
from autoextend.lab.guest import GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import run_libvirtd
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.libvirt_backend import backups
from autoextend.volumes import VolumeRef

from .harness import VG, MiB, Rig, lab_domains, monitoring

pytestmark = pytest.mark.slow

DATA_MIB = 48
TARGET_MIB = 16
READ_DELAY_S = 0.02  # per FUSE read (128 KiB at most): a few MiB/s


def push_xml(target: str) -> str:
    return ("<domainbackup mode='push'><disks>"
            "<disk name='vda' backup='yes' type='block'><driver type='qcow2'/>"
            f"<target dev='{target}'/></disk></disks></domainbackup>")


async def size_of(rig: Rig, volume: VolumeRef) -> int:
    return (await anyio.Path(rig.backend.file_path(volume)).stat()).st_size


def backup_drives(rig: Rig, vm: str) -> list[dict[str, Any]]:
    found = rig.vm(vm)
    return [d for d in (found or {}).get("drives", []) if d.get("job") == "backup"]


@asynccontextmanager
async def pushing(guest: GuestImage, workdir: Path, name: str, watch_backups: bool
                  ) -> AsyncIterator[tuple[Rig, Any, FaultFs, Path, VolumeRef, str]]:
    """A paused domain on a slow FUSE disk holding DATA_MIB of data, and a push backup
    running into a TARGET_MIB managed volume; yields once libvirt reports the backup."""
    async with fault_fs(workdir / "faultfs") as fs, \
            run_libvirtd(workdir / "libvirtd") as daemon:
        # A raw image (the lab's file disks are raw), all data: the backup copies it all.
        image = await anyio.to_thread.run_sync(fs.create, f"{name}.img", DATA_MIB * MiB)
        await proc.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {DATA_MIB}M",
                        str(image)])
        async with lab_domains(daemon.uri, workdir, guest, chunk_mib=8, poll_interval_s=0.5,
                               full_poll_interval_s=0.5, watch_backups=watch_backups
                               ) as rig, monitoring(rig):
            # A blank volume: libvirt formats the target (qcow2 on the block device).
            target_vol = VolumeRef(VG, f"{name}-target")
            target = await rig.backend.create(target_vol, TARGET_MIB * MiB)
            assert target is not None
            rig.volumes.append(target_vol)
            xml = guest_domain_xml(name, guest, [str(image)], GuestJob(mib=1),
                                   workdir / f"{name}.serial", files=True)
            rig.domains.append(name)
            await rig.call(rig.conn.createXML, xml, libvirt.VIR_DOMAIN_START_PAUSED)
            handle = await rig.dom(name)
            await anyio.to_thread.run_sync(fs.slow, f"{name}.img", READ_DELAY_S)
            await rig.call(handle.backupBegin, push_xml(target), None, 0)
            images = backups.parse_backup(str(await rig.call(handle.backupGetXMLDesc, 0)))
            assert [(i.disk, i.mode, i.path) for i in images] == [("vda", "push", target)]
            yield rig, handle, fs, image, target_vol, target


async def backup_outcome(rig: Rig, handle: Any, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    """Wait for the backup job to end; libvirt's completed job stats."""
    async def ended() -> bool:
        info = await rig.call(handle.jobInfo)
        return bool(info[0] == libvirt.VIR_DOMAIN_JOB_NONE)

    await until(ended, timeout, "the backup job to end")
    return dict(await rig.call(handle.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))


@pytest.mark.timeout(600)
async def test_push_backup_target_is_extended_and_completes(
    lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with pushing(lab_guest, lab_tmp_path, "bk-push", True) as (
            rig, handle, fs, image, target_vol, target):
        await until(lambda: bool(backup_drives(rig, "bk-push")), 60,
                    "the target monitored as a backup target",
                    describe=lambda: rig.vm("bk-push"))
        assert backup_drives(rig, "bk-push")[0]["path"] == target

        async def grown() -> bool:
            return await size_of(rig, target_vol) > TARGET_MIB * MiB

        await until(grown, 120, "the target extended", describe=lambda: rig.vm("bk-push"))
        job = await backup_outcome(rig, handle, 300)
        size = await size_of(rig, target_vol)
        print(f"target {size // MiB} MiB; job {job}; {rig.history}")
        assert job.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED, job
        assert job.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP, job
        assert size >= DATA_MIB * MiB
        assert rig.tally.job_failures == 0
        # Pre-extension: the target's first extension went to its need (the disk's data
        # measured) at once, not one chunk (16 -> 24/32 MiB) per threshold event.
        extends = [int(line.split()[-1]) for line in rig.history.lines
                   if line.startswith("extend bk-push vda[") and "capped" not in line]
        assert extends, rig.history
        assert extends[0] >= DATA_MIB * MiB, rig.history
        # QEMU wrote the target with O_DIRECT: read it back past this host's page cache.
        await proc.run(["blockdev", "--flushbufs", target])
        assert (await qemu_img_check(target)).clean
        await anyio.to_thread.run_sync(fs.heal, image.name)
        same = await anyio.run_process(["qemu-img", "compare", "-U", "-T", "none", "-f",
                                        "raw", "-F", "qcow2", str(image), target],
                                       check=False)
        assert same.returncode == 0, same.stdout + same.stderr


@pytest.mark.timeout(600)
async def test_push_backup_without_the_watch_fails_on_the_full_target(
    lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """Negative control: the backend's backup watch off."""
    async with pushing(lab_guest, lab_tmp_path, "bk-push-off", False) as (
            rig, handle, _fs, _image, target_vol, _target):
        job = await backup_outcome(rig, handle, 300)
        print(f"job {job}; {rig.history}")
        assert job.get("type") == libvirt.VIR_DOMAIN_JOB_FAILED, job
        assert job.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP, job
        assert not backup_drives(rig, "bk-push-off")
        assert await size_of(rig, target_vol) == TARGET_MIB * MiB
