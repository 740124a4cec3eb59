"""Issue 4 end to end: the monitor with the libvirt backend and the local extender over loop
volumes, keeping real TCG guests (libvirt domains of the lab's libvirtd) supplied with space.

Every test starts the monitor before its domains, so each also covers "a domain started after
the service is monitored"; ``test_domains_before_and_after_start`` covers both discovery paths
explicitly.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import anyio
import libvirt
import pytest

from autoextend.lab.guest import GuestJob, Mode
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd, start_libvirtd
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.monitor.protocols import PauseReason

from .harness import MiB, lab_domains, monitoring, served

pytestmark = pytest.mark.slow


async def test_guest_writes_1gib_into_128mib_volume(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with served(libvirtd.uri, lab_tmp_path, lab_guest, chunk_mib=128) as rig:
        dom = await rig.start("lv-1g", GuestJob(mib=1024, seed=4), start_mib=128,
                              virtual_mib=2048)
        result = await rig.finished(dom, timeout=400)
        assert result.verified, result
        assert result.written_mib == 1024
        assert rig.tally.extends >= 7  # 128 MiB -> more than 1 GiB in 128 MiB chunks
        assert rig.tally.failed == 0, str(rig.history)
        size = (await anyio.Path(rig.backend.file_path(dom.volume)).stat()).st_size
        assert 1024 * MiB < size <= 2048 * MiB * 11 // 10
        assert (await qemu_img_check(dom.device)).clean
        await until(lambda: rig.vm("lv-1g") is None, 10, "the stopped domain to be dropped")


async def test_enospc_pause_is_extended_and_resumed(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with served(libvirtd.uri, lab_tmp_path, lab_guest) as rig:
        rig.extender.hold()
        dom = await rig.start("lv-enospc", GuestJob(mib=128, seed=5), start_mib=64,
                              virtual_mib=512)
        await until(lambda: rig.paused("lv-enospc") == PauseReason.ENOSPC.value, 120,
                    "the ENOSPC pause")
        state = await rig.state("lv-enospc")
        assert state == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        assert rig.tally.resumes == 0
        rig.extender.release()
        await until(lambda: rig.tally.resumes >= 1, 60, "the automatic resume")
        result = await rig.finished(dom, timeout=120)
        assert result.verified, result
        assert rig.tally.enospc_pauses >= 1
        assert (await qemu_img_check(dom.device)).clean


async def test_vm_suspended_by_hand_stays_suspended(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with served(libvirtd.uri, lab_tmp_path, lab_guest, poll_interval_s=0.5) as rig:
        dom = await rig.start("lv-user", GuestJob(mib=48, rate_kib_s=8192, seed=6),
                              start_mib=64, virtual_mib=512)
        await until(lambda: rig.has_drive("lv-user"), 60, "the drive to be monitored")
        handle = await rig.dom("lv-user")
        await rig.call(handle.suspend)
        await until(lambda: rig.paused("lv-user") == PauseReason.USER.value, 30,
                    "the monitor to see the operator pause")
        polls = rig.monitor.polls
        await until(lambda: rig.monitor.polls >= polls + 4 and rig.monitor.idle(), 60,
                    "four polls handled")
        rig.monitor.reconfigure(rig.monitor.settings, None, False)  # forces a resync
        await until(rig.monitor.idle, 30, "the resync handled")
        assert await rig.state("lv-user") == (libvirt.VIR_DOMAIN_PAUSED,
                                              libvirt.VIR_DOMAIN_PAUSED_USER)
        assert rig.tally.resumes == 0
        await rig.call(handle.resume)
        await until(lambda: rig.paused("lv-user") is None, 30, "the monitor to see the resume")
        result = await rig.finished(dom, timeout=120)
        assert result.verified, result


async def test_domains_before_and_after_start(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """One domain runs before the service starts (found at connect), one is started after
    (found through its STARTED event); both are extended and both finish."""
    async with lab_domains(libvirtd.uri, lab_tmp_path, lab_guest) as rig:
        early = await rig.start("lv-early", GuestJob(mib=96, rate_kib_s=16384, seed=7),
                                start_mib=32, virtual_mib=512)
        async with monitoring(rig):
            assert "lv-early" in rig.hypervisor.vms()  # announced by the first discovery
            late = await rig.start("lv-late", GuestJob(mib=96, seed=8), start_mib=32,
                                   virtual_mib=512)
            await until(lambda: rig.has_drive("lv-late"), 60, "the late domain's drive")
            for dom in (early, late):
                result = await rig.finished(dom, timeout=180)
                assert result.verified, (dom.name, result, str(rig.history))
            for dom in (early, late):
                size = (await anyio.Path(rig.backend.file_path(dom.volume)).stat()).st_size
                assert size > 96 * MiB, (dom.name, size, str(rig.history))  # both extended
            assert rig.tally.failed == 0, str(rig.history)
            await until(lambda: rig.vm("lv-early") is None and rig.vm("lv-late") is None, 10,
                        "both stopped domains to be dropped")


async def _kill_libvirtd(daemon: LabLibvirtd) -> None:
    """SIGKILL the daemon itself (its QEMUs live on); its lab supervisor then exits."""
    pid = int((daemon.root / "libvirtd.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(30):
        await daemon.process.wait()


async def test_libvirtd_killed_and_restarted_mid_run(
    lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    root = lab_tmp_path / "lvd"
    first = await start_libvirtd(root)
    second: LabLibvirtd | None = None
    try:
        async with served(first.uri, lab_tmp_path, lab_guest, chunk_mib=32,
                          poll_interval_s=0.5) as rig:
            job = GuestJob(mib=160, rate_kib_s=12288, seed=9)
            dom = await rig.start("lv-restart", job, start_mib=32, virtual_mib=512)
            await until(lambda: rig.tally.extends >= 1, 120, "a first extension")
            assert rig.hypervisor.connects == 1
            extends = rig.tally.extends  # none can finish while libvirtd is away
            await _kill_libvirtd(first)
            await until(lambda: not rig.hypervisor.connected, 10, "the backend to notice")
            await anyio.sleep(2.0)  # the guest keeps writing; nothing can extend meanwhile
            second = await start_libvirtd(root)
            await rig.reconnect()
            await until(lambda: rig.hypervisor.connects >= 2, 30, "the backend to reconnect")
            await rig.gone(dom, timeout=240)
            assert rig.tally.extends > extends, str(rig.history)  # served after restart
            assert (await qemu_img_check(dom.device)).clean
            # The killed libvirtd took its virtlogd along, and with it the guest's serial
            # console: read the data back with a second guest instead.
            check = await rig.start("lv-restart-check", replace(job, mode=Mode.VERIFY),
                                    reuse=dom)
            result = await rig.finished(check, timeout=120)
            assert result.verified, result
            assert result.mode is Mode.VERIFY
    finally:
        with anyio.CancelScope(shield=True):
            if second is not None:
                await second.stop()
            else:
                await first.stop()
