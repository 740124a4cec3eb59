"""Issue 29 item 4: a pull-mode backup through libvirt (``virDomainBackupBegin``).

A first guest writes 40 MiB (seed A) on a loop volume. A second guest is started paused on
that volume, a pull-mode backup begins with a qcow2 scratch on a 16 MiB managed volume
(libvirt formats it), then the guest overwrites the same 40 MiB (seed B) at 2 MiB/s:
QEMU's copy-before-write filter copies every old cluster into the scratch first, so the
scratch must hold about 40 MiB.

- With the backend's backup watch (``libvirt_backend/backups.py``): the block stats show an
  image the domain XML does not describe, the backend reads the backup XML, and the scratch
  (``vda[N]``) is watched and extended like any job target. The NBD export, read while the
  guest overwrites, still holds seed A (the backup's point in time); the guest verifies
  seed B; the test then ends the backup (``abortJob``) with no job failure.
- Negative control (the watch off, the backend's constructor argument): the scratch stays
  at 16 MiB and fills. libvirt 9.0 / QEMU 7.2 then fail the *guest's* write (the
  copy-before-write filter's default, ``on-cbw-error=break-guest-write``): the guest pauses
  with ENOSPC on ``vda``, the monitor grows ``vda`` (which is not what is full) and resumes
  it, and it pauses again, never finishing; the backup job itself does not fail.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.lab import proc
from autoextend.lab.guest import GuestJob, Mode, find_result, with_expected_md5
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.libvirt_backend import backups
from autoextend.volumes import VolumeRef

from .harness import Domain, MiB, Rig, lab_domains, monitoring

pytestmark = pytest.mark.slow

OLD = GuestJob(mib=40, seed=41)
NEW = GuestJob(mib=40, seed=42, rate_kib_s=2048)
SCRATCH_MIB = 16


def pull_xml(socket: Path, scratch: str) -> str:
    return (f"<domainbackup mode='pull'><server transport='unix' socket='{socket}'/>"
            "<disks><disk name='vda' backup='yes' type='block'>"
            f"<scratch dev='{scratch}'/></disk></disks></domainbackup>")


async def size_of(rig: Rig, volume: VolumeRef) -> int:
    return (await anyio.Path(rig.backend.file_path(volume)).stat()).st_size


def backup_drives(rig: Rig, vm: str) -> list[dict[str, Any]]:
    found = rig.vm(vm)
    return [d for d in (found or {}).get("drives", []) if d.get("job") == "backup"]


async def export_md5(socket: Path, workdir: Path, mib: int) -> str:
    """md5 of the first ``mib`` MiB of the pull-mode NBD export (the backup's view)."""
    out = workdir / "export.raw"
    await proc.run(["qemu-img", "dd", "-f", "raw", "-O", "raw",
                    f"if=nbd+unix:///vda?socket={socket}", f"of={out}", "bs=1M",
                    f"count={mib}"])
    data = await anyio.Path(out).read_bytes()
    return hashlib.md5(data[: mib * MiB]).hexdigest()


@asynccontextmanager
async def backing_up(libvirtd: LabLibvirtd, lab_guest: GuestImage, workdir: Path,
                     name: str, watch_backups: bool
                     ) -> AsyncIterator[tuple[Rig, Domain, VolumeRef, str, Path]]:
    """OLD's data on a volume, a paused guest that will overwrite it with NEW's, and a
    pull-mode backup running with its scratch on a 16 MiB managed volume."""
    async with lab_domains(libvirtd.uri, workdir, lab_guest, chunk_mib=8,
                           poll_interval_s=0.5, full_poll_interval_s=0.5,
                           watch_backups=watch_backups) as rig, monitoring(rig):
        vol, dev = await rig.disk(f"{name}-disk", 64, 256)
        writer = await rig.start(f"{name}-w", OLD, reuse=Domain(
            f"{name}-w", dev, vol, rig.workdir / f"{name}-w.serial"))
        written = await rig.finished(writer, timeout=240)
        assert written.verified and written.written_mib == OLD.mib, written
        dom = await rig.start(name, NEW, paused=True, reuse=Domain(
            name, dev, vol, rig.workdir / f"{name}.serial"))
        scratch_vol, scratch = await rig.disk(f"{name}-scratch", SCRATCH_MIB, 256)
        socket = workdir / "nbd.sock"
        handle = await rig.dom(name)
        await rig.call(handle.backupBegin, pull_xml(socket, scratch), None, 0)
        images = backups.parse_backup(str(await rig.call(handle.backupGetXMLDesc, 0)))
        assert [(i.disk, i.mode, i.path) for i in images] == [("vda", "pull", scratch)]
        yield rig, dom, scratch_vol, scratch, socket


async def test_pull_backup_scratch_is_extended(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with backing_up(libvirtd, lab_guest, lab_tmp_path, "bk-pull", True) as (
            rig, dom, scratch_vol, scratch, socket):
        handle = await rig.dom(dom.name)
        await rig.call(handle.resume)
        await until(lambda: bool(backup_drives(rig, dom.name)), 60,
                    "the scratch monitored as a backup target")
        drive = backup_drives(rig, dom.name)[0]
        assert drive["path"] == scratch, drive

        async def grown() -> bool:
            return await size_of(rig, scratch_vol) > SCRATCH_MIB * MiB

        await until(grown, 120, "the scratch extended")
        # The backup's view while the guest overwrites: still OLD's data.
        old = await anyio.to_thread.run_sync(with_expected_md5, OLD)
        assert await export_md5(socket, lab_tmp_path, OLD.mib) == old.expect_md5
        result = await rig.finished(dom, timeout=300)
        size = await size_of(rig, scratch_vol)
        print(f"scratch {size // MiB} MiB; {rig.history}")
        assert result.verified and result.mode is Mode.WRITE, result
        assert rig.tally.job_failures == 0
        # started paused (seen as a user pause unless the monitor's first look came after the
        # resume: its first check can fail on libvirt's transient "backup job data missing");
        # never an ENOSPC pause
        paused = [line for line in rig.history.lines if line.startswith("paused")]
        assert paused in ([], [f"paused {dom.name} user"]), str(rig.history)
        assert size >= (SCRATCH_MIB + OLD.mib // 2) * MiB
        assert (await qemu_img_check(scratch)).clean


async def test_pull_backup_without_the_watch_fills_the_scratch(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """Negative control: the backend's backup watch off."""
    async with backing_up(libvirtd, lab_guest, lab_tmp_path, "bk-nowatch", False) as (
            rig, dom, scratch_vol, scratch, socket):
        handle = await rig.dom(dom.name)
        await rig.call(handle.resume)

        def retried() -> bool:  # paused by the full scratch, resumed, paused again
            return sum(line == f"resumed {dom.name} automatic=True"
                       for line in rig.history.lines) >= 2

        await until(retried, 180, "the guest paused again and again by the full scratch")
        job = await rig.call(handle.jobStats)
        text = await anyio.Path(dom.serial).read_text(errors="replace")
        print(f"job {job}; {rig.history}")
        assert f"paused {dom.name} enospc" in rig.history.lines
        assert find_result(text) is None, "the guest finished: the scratch did not fill"
        assert job.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP, job
        assert 0 < job["disk_temp_used"] <= SCRATCH_MIB * MiB, job
        assert not backup_drives(rig, dom.name)
        assert await size_of(rig, scratch_vol) == SCRATCH_MIB * MiB
