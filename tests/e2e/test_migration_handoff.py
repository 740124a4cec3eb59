"""Issue 31, soak finding 2: a guest autoextend paused for ENOSPC on host A, live-migrated
to host B while paused, is resumed on B (``monitor/handoff.py``: B adopts A's claim from A's
in-use record, extends through the SPM, resumes); a guest an operator paused is migrated
and stays paused (nobody claims it). Two autoextend host processes over QMP sharing one
pool; the VG is full while the guest runs out of space on A, so the pause lasts until the
guest has left A (the soak's case), and is grown again once the guest is on B."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.migrate import start_destination, start_migration
from autoextend.lab.multihost import VG, Pool, PoolGuest, pool
from autoextend.lab.qemu import QemuVm
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.lvm.loop_backend import vg_used

pytestmark = pytest.mark.slow
MiB = 1 << 20
START_MIB = 64
UNLIMITED = 1 << 40


async def qemu_status(vm: QemuVm) -> str:
    async with vm.qmp("test-handoff") as client:
        reply = await client.execute("query-status")
    assert isinstance(reply, dict)
    return str(reply["status"])


async def migrate_paused(p: Pool, guest: PoolGuest, name: str,
                         target: int) -> tuple[QemuVm, str]:
    """Migrate ``guest`` (paused) to host ``target`` at full speed; the destination QEMU
    and its device."""
    dst = p.hosts[target]
    device = await p.host_volumes(target).attach(guest.volume)
    dest = await start_destination(guest.vm, [device], p.directory / "vms" / f"{name}-{target}",
                                   dst.directory / "qmp")
    p.stack.push_async_callback(dest.stop)
    migration = await start_migration(guest.vm, dest, p.directory / f"{name}.mig",
                                      max_bandwidth=UNLIMITED)
    assert await migration.wait_ended(timeout=120) == "completed"
    return dest, device


async def test_enospc_pause_is_resumed_on_the_destination(lab_tmp_path: Path) -> None:
    job = GuestJob(mib=96, rate_kib_s=12 * 1024, seed=31)
    async with pool(2, directory=lab_tmp_path, chunk_mib=16, poll_interval_s=0.5) as p:
        source = await p.wait_for_spm()
        target = next(h for h in p.hosts if h != source)
        src, dst = p.hosts[source], p.hosts[target]
        root = str(p.directory / "volumes" / VG)
        guest = await p.start_guest(source, "hand1", job, start_mib=START_MIB,
                                    virtual_mib=1024)
        # The VG is full: no extension can be made, the guest pauses on A and stays paused.
        await p.volumes.set_vg_capacity(VG, await anyio.to_thread.run_sync(vg_used, root))

        async def paused_on_a() -> bool:
            return (await src.vm_status("hand1")).get("paused") == "enospc"
        await until(paused_on_a, 120, "the guest paused for ENOSPC on host A")
        assert await qemu_status(guest.vm) == "io-error"
        dest, device = await migrate_paused(p, guest, "hand1", target)
        async def adopted() -> bool:
            return bool(dst.events("adopted the ENOSPC pause of a vm that arrived paused",
                                   vm="hand1"))
        await until(adopted, 90, "host B adopting host A's claim")
        found = dst.events("adopted the ENOSPC pause of a vm that arrived paused", vm="hand1")
        assert found[0]["host_id"] == source
        await guest.vm.stop()  # the source QEMU (postmigrate) goes, as management would
        # B extends through the SPM once the VG has room again, then resumes.
        await p.volumes.set_vg_capacity(VG, None)
        result = await dest.result(timeout=180)
        assert result.verified, result
        assert result.written_mib == job.mib
        assert await dest.wait_exit(timeout=60) == 0
        assert "I/O error" not in dest.serial_text()
        assert dst.events("vm resumed", vm="hand1")  # B resumed it
        assert not src.events("vm resumed", vm="hand1")  # A never did
        check = await qemu_img_check(device)
        assert check.clean, check


async def test_user_pause_stays_paused_after_migration(lab_tmp_path: Path) -> None:
    """The negative control: an operator's pause is migrated, and nobody resumes it."""
    job = GuestJob(mib=256, rate_kib_s=256, seed=32)  # still writing when paused
    async with pool(2, directory=lab_tmp_path, chunk_mib=16, poll_interval_s=0.5) as p:
        source = await p.wait_for_spm()
        target = next(h for h in p.hosts if h != source)
        src, dst = p.hosts[source], p.hosts[target]
        guest = await p.start_guest(source, "hand2", job, start_mib=START_MIB,
                                    virtual_mib=1024)

        async def monitored() -> bool:
            return bool((await src.vm_status("hand2")).get("drives"))
        await until(monitored, 60, "host A monitoring the guest")
        async with guest.vm.qmp("test-handoff") as client:
            await client.execute("stop")
        async def user_paused() -> bool:
            return (await src.vm_status("hand2")).get("paused") == "user"
        await until(user_paused, 30, "host A seeing the operator's pause")
        dest, _ = await migrate_paused(p, guest, "hand2", target)
        async def gave_up() -> bool:
            return bool(dst.events("no host claimed the pause of a vm that arrived paused: "
                                    "leaving it paused", vm="hand2"))
        await until(gave_up, 150, "host B giving up on a claim")
        assert await qemu_status(dest) == "paused"
        assert not dst.events("vm resumed", vm="hand2")
        assert not src.events("vm resumed", vm="hand2")
        status = await dst.vm_status("hand2")
        assert "no host claimed" in status["last_action"]
