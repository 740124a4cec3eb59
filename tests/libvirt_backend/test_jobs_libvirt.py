"""Issue 13 through libvirt: ``virsh blockcommit --active --pivot`` and ``virsh blockcopy``
(their API calls) on a lab domain whose guest writes during the job, with the monitor and
the local extender over loop volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.lab import proc
from autoextend.lab.guest import START_MARKER, GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until

from .harness import Domain, MiB, Rig, served

pytestmark = pytest.mark.slow


def job_drives(rig: Rig, vm: str) -> list[dict[str, Any]]:
    found = rig.vm(vm)
    return [d for d in (found or {}).get("drives", []) if d.get("job")]


def top_path(rig: Rig, vm: str) -> str | None:
    found = rig.vm(vm)
    for d in (found or {}).get("drives", []):
        if d["drive"].startswith("vda[") and not d.get("job"):
            return str(d["path"])
    return None


async def xml_of(rig: Rig, name: str) -> str:
    dom = await rig.dom(name)
    return str(await rig.call(dom.XMLDesc, 0))


async def wait_xml(rig: Rig, name: str, needle: str, present: bool, what: str) -> None:
    with anyio.move_on_after(60):
        while (needle in await xml_of(rig, name)) != present:
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def started(rig: Rig, domain: Domain) -> None:
    async def marker() -> bool:
        return START_MARKER in await anyio.Path(domain.serial).read_text(errors="replace")
    with anyio.move_on_after(120):
        while not await marker():
            await anyio.sleep(0.05)
        return
    raise AssertionError("the guest never started writing")


async def test_blockcommit_active_pivot(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with served(libvirtd.uri, lab_tmp_path, lab_guest, chunk_mib=8,
                      poll_interval_s=0.5) as rig:
        base_vol, base = await rig.disk("lvj-base", 16, 256)
        top_vol, top = await rig.disk("lvj-top", 64, 256)
        await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F",
                        "qcow2", top, "256M"])
        serial = rig.workdir / "lvj-commit.serial"
        dom = await rig.start("lvj-commit", GuestJob(mib=40, rate_kib_s=8192, seed=21),
                              reuse=Domain("lvj-commit", top, top_vol, serial))
        await started(rig, dom)
        handle = await rig.dom("lvj-commit")
        await rig.call(handle.blockCommit, "vda", None, None, 0,
                       libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        await until(lambda: any(d["job"] == "commit" for d in job_drives(rig, "lvj-commit")),
                    30, "the commit's base monitored as a job target")
        await wait_xml(rig, "lvj-commit", "ready='yes'", True, "the commit ready")
        await rig.call(handle.blockJobAbort, "vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        await wait_xml(rig, "lvj-commit", "<mirror", False, "the pivot")
        await until(lambda: top_path(rig, "lvj-commit") == base, 30, "the base is the top")
        result = await rig.finished(dom, timeout=240)
        assert result.verified, result
        assert rig.tally.job_failures == 0
        size = (await anyio.Path(rig.backend.file_path(base_vol)).stat()).st_size
        assert size > 40 * MiB
        assert (await qemu_img_check(base)).clean


async def test_blockcopy_pivot(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with served(libvirtd.uri, lab_tmp_path, lab_guest, chunk_mib=8,
                      poll_interval_s=0.5) as rig:
        copy_vol, copy = await rig.disk("lvj-copy", 16, 256)
        dom = await rig.start("lvj-copy", GuestJob(mib=40, rate_kib_s=8192, seed=22),
                              start_mib=64, virtual_mib=256)
        await started(rig, dom)
        handle = await rig.dom("lvj-copy")
        dest = (f"<disk type='block'><driver type='qcow2'/><source dev='{copy}'/></disk>")
        await rig.call(handle.blockCopy, "vda", dest, None,
                       libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
                       | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
        await until(lambda: any(d["job"] == "mirror" for d in job_drives(rig, "lvj-copy")),
                    30, "the copy's target monitored as a job target")
        await wait_xml(rig, "lvj-copy", "ready='yes'", True, "the copy ready")
        await rig.call(handle.blockJobAbort, "vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        await wait_xml(rig, "lvj-copy", "<mirror", False, "the pivot")
        await until(lambda: top_path(rig, "lvj-copy") == copy, 30, "the copy is the top")
        result = await rig.finished(dom, timeout=240)
        assert result.verified, result
        assert rig.tally.job_failures == 0
        size = (await anyio.Path(rig.backend.file_path(copy_vol)).stat()).st_size
        assert size > 40 * MiB
        assert (await qemu_img_check(copy)).clean
