"""Issue 12 in mailbox mode: two autoextend host processes sharing one pool through the SPM
(elected by the lease), a guest migrating from one host to the other while the source
requests extensions through the mailbox. Sizes scaled as in tests/e2e/test_migration.py.
Run with the SPM on the source and on the destination."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.migrate import start_destination, start_migration
from autoextend.lab.multihost import pool
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev

pytestmark = pytest.mark.slow
MiB = 1 << 20
START_MIB = 64
JOB = GuestJob(mib=96, rate_kib_s=12 * 1024, seed=21)


DEFERRED = "extended; refresh deferred until the migration ends"


@pytest.mark.parametrize("spm_on", ["source", "destination"])
async def test_mailbox_migration_source_extends_through_spm(
    lab_tmp_path: Path, spm_on: str
) -> None:
    """The source host asks the SPM for the extensions made during the migration, whether
    the SPM is the source itself or the destination (whichever the lease elected, the guest
    is started on the host that makes it so)."""
    async with pool(2, directory=lab_tmp_path, chunk_mib=16, poll_interval_s=0.5) as p:
        spm = await p.wait_for_spm()
        other = next(h for h in p.hosts if h != spm)
        source, target = (spm, other) if spm_on == "source" else (other, spm)
        guest = await p.start_guest(source, "mbx1", JOB, start_mib=START_MIB,
                                    virtual_mib=1024)
        src, dst = p.hosts[source], p.hosts[target]
        async def monitored() -> bool:
            return bool((await src.vm_status("mbx1")).get("drives"))
        await until(monitored, 60, "the source monitoring mbx1")
        dest_device = await p.host_volumes(target).attach(guest.volume)
        dest = await start_destination(guest.vm, [dest_device],
                                       p.directory / "vms" / f"mbx1-{target}",
                                       dst.directory / "qmp")
        p.stack.push_async_callback(dest.stop)
        migration = await start_migration(guest.vm, dest, p.directory / "mbx1.mig",
                                          max_bandwidth=256 << 10)
        async def outran() -> bool:
            return len(src.events(DEFERRED, vm="mbx1")) >= 2 and (
                await src.vm_status("mbx1")).get("paused") == "enospc"
        await until(outran, 90, "two deferred extensions and an ENOSPC pause on the source")
        assert (await src.vm_status("mbx1"))["migration"] == "migrating-out"
        assert loopdev.size_of(guest.device) == START_MIB * MiB  # the source's view: frozen
        assert await migration.finish() == "completed"
        await guest.vm.stop()
        result = await dest.result(timeout=120)
        assert result.verified, result
        assert result.written_mib == JOB.mib
        assert await dest.wait_exit(timeout=60) == 0
        assert "I/O error" not in dest.serial_text()
        assert loopdev.size_of(guest.device) == START_MIB * MiB  # never refreshed after
        # The SPM (host 1 or 2) extended for the source's requests during the migration.
        spm_sizes = [e for e in p.hosts[spm].log_events() if e.get("event") == "volume extended"
                     and e.get("volume") == str(guest.volume)]
        assert len(spm_sizes) >= 2
        check = await qemu_img_check(dest_device)
        assert check.clean, check
