"""Issue 3 end to end: the real service (QMP backend, local extender, loop volumes) keeping
real TCG guests supplied with space."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.monitor import policy
from autoextend.monitor.observer import Tally
from autoextend.monitor.protocols import PauseReason
from autoextend.qemuimg import qemu_img_fully_allocated
from tests.doubles import HeldExtender

pytestmark = pytest.mark.slow
MiB = 1 << 20


def drive(host: LabHost, vm: str) -> dict[str, object]:
    for v in host.service.monitor.snapshot():
        if v["vm"] == vm and v["drives"]:
            return dict(v["drives"][0])
    return {}


def paused(host: LabHost, vm: str) -> str | None:
    for v in host.service.monitor.snapshot():
        if v["vm"] == vm:
            state: str | None = v["paused"]
            return state
    return None


async def test_guest_writes_1gib_into_128mib_volume(lab_tmp_path: Path) -> None:
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=128) as host:
        guest = await host.start_guest("vm1", GuestJob(mib=1024), start_mib=128,
                                       virtual_mib=2048)
        result = await guest.vm.result(timeout=600)
        assert await guest.vm.wait_exit(timeout=60) == 0
        assert result.verified, result
        assert result.written_mib == 1024
        assert tally.extends >= 6
        assert tally.failed == 0
        assert host.volumes.file_path(guest.volume)
        size = (await anyio.Path(host.volumes.file_path(guest.volume)).stat()).st_size
        assert 1024 * MiB < size <= 2048 * MiB * 11 // 10
        check = await qemu_img_check(guest.device)
        assert check.clean, check


async def test_enospc_pause_is_extended_and_resumed(lab_tmp_path: Path) -> None:
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=128) as host:
        held = HeldExtender(host.service.monitor.extender)
        host.service.monitor.extender = held
        guest = await host.start_guest("vm1", GuestJob(mib=192), start_mib=64, virtual_mib=512)
        await until(lambda: paused(host, "vm1") == PauseReason.ENOSPC.value, 120,
                    "the ENOSPC pause")
        async with guest.vm.qmp() as qmp:
            status = await qmp.execute("query-status")
        assert status["status"] == "io-error"  # type: ignore[index]
        assert tally.resumes == 0
        held.release()
        result = await guest.vm.result(timeout=300)
        assert result.verified, result
        assert tally.enospc_pauses >= 1
        assert tally.resumes >= 1
        assert await guest.vm.wait_exit(timeout=60) == 0  # QEMU releases the image
        assert (await qemu_img_check(guest.device)).clean


async def test_operator_pause_is_never_resumed(lab_tmp_path: Path) -> None:
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=64, poll_interval_s=0.5) as host:
        guest = await host.start_guest("vm1", GuestJob(mib=96, rate_kib_s=16384), start_mib=64,
                                       virtual_mib=512)
        await guest.vm.wait_for_start(timeout=120)
        async with guest.vm.qmp() as qmp:
            await qmp.execute("stop")
            await until(lambda: paused(host, "vm1") == PauseReason.USER.value, 30,
                        "the monitor to see the operator pause")
            polls = host.service.monitor.polls
            await until(lambda: host.service.monitor.polls >= polls + 4
                        and host.service.monitor.idle(), 60, "four polls handled")
            status = await qmp.execute("query-status")
            assert status["status"] == "paused"  # type: ignore[index]
            assert tally.resumes == 0
            await qmp.execute("cont")
        result = await guest.vm.result(timeout=300)
        assert result.verified


async def test_drive_at_cap_is_disabled(lab_tmp_path: Path) -> None:
    # virtual 64 MiB -> the measured cap: round_up(qemu-img measure's fully allocated size
    # (64.4 MiB) + one cluster, 4 MiB) = 68 MiB (capacity x 1.1 gave 72 MiB); start 32 MiB,
    # chunk 128: the first extension is capped there and the drive is DISABLED from then on.
    full = await qemu_img_fully_allocated(64 * MiB, 64 << 10)
    assert full is not None
    cap = policy.measured_cap(full, 0, 64 << 10, 4 * MiB)
    assert cap == 68 * MiB
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=128,
                        poll_interval_s=0.5) as host:
        guest = await host.start_guest("vm1", GuestJob(mib=60, rate_kib_s=4096), start_mib=32,
                                       virtual_mib=64)
        await until(lambda: drive(host, "vm1").get("state") == "disabled", 60, "DISABLED")
        extends = tally.extends
        assert tally.capped >= 1
        await guest.vm.wait_for_serial("AUTOEXTEND-GUEST-PROGRESS", timeout=120)
        polls = host.service.monitor.polls
        await until(lambda: host.service.monitor.polls >= polls + 4
                    and host.service.monitor.idle(extensions=False), 60,
                    "four polls handled while the guest writes")
        assert drive(host, "vm1").get("state") == "disabled"
        assert tally.extends == extends
        result = await guest.vm.result(timeout=300)
        assert result.verified, result
        size = (await anyio.Path(host.volumes.file_path(guest.volume)).stat()).st_size
        assert size == cap


async def test_qemu_killed_mid_run_others_keep_being_served(lab_tmp_path: Path) -> None:
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=64, poll_interval_s=0.5) as host:
        victim = await host.start_guest("vm1", GuestJob(mib=512, rate_kib_s=8192), start_mib=64,
                                        virtual_mib=1024)
        other = await host.start_guest("vm2", GuestJob(mib=256), start_mib=64, virtual_mib=1024)
        await until(lambda: tally.extends >= 1, 120, "a first extension")
        victim.vm.send_signal(signal.SIGKILL)
        await victim.vm.wait_exit(timeout=30)
        await until(lambda: paused(host, "vm1") is None and not drive(host, "vm1"), 30,
                    "vm1 to be dropped")
        result = await other.vm.result(timeout=600)
        assert result.verified, result
        # A new QEMU on the same socket is picked up and served.
        before = tally.extends
        again = await host.restart_guest("vm1", GuestJob(mib=256, seed=7))
        await until(lambda: bool(drive(host, "vm1")), 60, "vm1 to be picked up again")
        result = await again.vm.result(timeout=600)
        assert result.verified, result
        assert tally.extends > before
