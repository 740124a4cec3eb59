"""Issue 31's product guard, through QMP with a real guest (``monitor/migrating.py``).

A QMP management that holds the destination with ``-S`` but does not set
``late-block-activate`` gets its drives activated at the migration's completion, on the view
the destination host had then (``tests/e2e/test_migration_node_length.py``: QEMU keeps that
length and reads zeros past it). Here the destination host's autoextend first sees the VM
after the completion (its socket appears then, as when that service was down or frozen
through the migration, the soak's host 3), refreshes the view on arrival, and:

* ``stale-activation``: QEMU's node length is below the refreshed view and the guest has
  not run here: the service stops that QEMU before it runs (the management's ``cont``
  fails; the source still has the guest, paused in ``postmigrate``).
* ``late-block-activate``: the nodes await activation, so nothing is stopped; the lab's
  ``cont`` after the refresh activates them on the whole view and the guest verifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.migrate import (
    MigrationLab,
    arrived_state,
    node_length,
    start_destination,
    start_migration,
    two_local_hosts,
)
from autoextend.lab.qemu import QemuVm
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev

pytestmark = pytest.mark.slow
MiB = 1 << 20
START_MIB = 32
JOB = GuestJob(mib=40, rate_kib_s=1024, seed=37)


async def qmp(vm: QemuVm, command: str, args: dict[str, Any] | None = None) -> Any:
    async with vm.qmp("test") as client:
        return await client.execute(command, args)


def extends(lab: MigrationLab, host: str, vm: str) -> int:
    for v in lab.hosts[host].service.monitor.snapshot():
        if v["vm"] == vm and v["drives"]:
            return int(v["drives"][0].get("extends", 0))
    return 0


async def arrive_late(lab: MigrationLab, name: str, *, late: bool, ran: bool = False
                      ) -> tuple[QemuVm, QemuVm, str]:
    """Boot ``name`` on src; attach dst's view (32 MiB) and start the destination QEMU held
    by ``-S`` with its socket where dst's service does not look; let the source extend and
    refresh (64 MiB); migrate; once it arrived, show dst's service the socket. ``ran``: the
    management continues the destination first, lets its guest write, and pauses it (a
    user's pause) before dst's service sees it."""
    vm, volume, src_device = await lab.start_guest("src", name, JOB, start_mib=START_MIB,
                                                   virtual_mib=256)
    dst_device = await lab.views("dst").attach(volume)
    hidden = lab.directory / "hidden-qmp"
    hidden.mkdir(exist_ok=True)
    dest = await start_destination(vm, [dst_device], lab.directory / "vms" / f"{name}-dst",
                                   hidden, autostart=False, late_block_activate=late)
    lab.stack.push_async_callback(dest.stop)
    await until(lambda: extends(lab, "src", name) >= 1
                and loopdev.size_of(src_device) > loopdev.size_of(dst_device), 180,
                "the source extending and refreshing its view")
    migration = await start_migration(vm, dest, lab.directory / f"{name}.mig",
                                      max_bandwidth=1 << 40)
    assert await migration.wait_ended(120) == "completed"
    assert await arrived_state(dest, 120) == "paused"
    assert await node_length(dest, "file0") == START_MIB * MiB  # opened on the stale view
    if ran:
        await qmp(dest, "cont")

        async def wrote() -> bool:
            stats = await qmp(dest, "query-blockstats")
            return any(e["stats"]["wr_operations"] > 0 for e in stats)

        await until(wrote, 60, "the guest writing on the destination")
        await qmp(dest, "stop")
    (lab.qmp_dir("dst") / f"{name}.sock").symlink_to(hidden / f"{name}.sock")
    await until(lambda: loopdev.size_of(dst_device) > START_MIB * MiB, 120,
                "dst's service refreshing the arrived VM's view")
    return vm, dest, dst_device


async def test_stale_activation_is_stopped_before_the_guest_runs(lab_tmp_path: Path) -> None:
    async with two_local_hosts(lab_tmp_path, chunk_mib=32, poll_interval_s=0.5) as lab:
        vm, dest, _ = await arrive_late(lab, "short1", late=False)
        # Stopped by dst's autoextend (QMP quit: exit 0); nothing else would end it: held
        # by -S, the lab never continues it here.
        assert await dest.wait_exit(timeout=120) == 0
        status = await qmp(vm, "query-status")
        assert status["status"] == "postmigrate", status  # the source still has the guest


async def test_late_block_activate_arrival_runs_and_verifies(lab_tmp_path: Path) -> None:
    async with two_local_hosts(lab_tmp_path, chunk_mib=32, poll_interval_s=0.5) as lab:
        vm, dest, dst_device = await arrive_late(lab, "short2", late=True)
        await until(lambda: "short2" in {v["vm"] for v in
                                         lab.hosts["dst"].service.monitor.snapshot()}, 60,
                    "dst's service watching the VM")
        await until(lambda: lab.hosts["dst"].service.monitor.idle(extensions=False), 60,
                    "dst's service done with the arrival")
        assert dest.returncode is None  # not stopped: its nodes await activation
        await qmp(dest, "cont")
        assert (await node_length(dest, "file0") or 0) >= loopdev.size_of(dst_device)
        await vm.stop()
        result = await dest.result(timeout=300)
        assert result.verified, result
        assert await dest.wait_exit(timeout=60) == 0
        check = await qemu_img_check(dst_device)
        assert check.clean, check


async def test_a_guest_that_ran_here_is_never_stopped(lab_tmp_path: Path) -> None:
    """The guard's other side: the same stale activation, but the guest ran (and wrote)
    before dst's service first saw it, paused by a user since. Stopping it now would lose a
    running guest and prevent nothing (it may already have read past the length): the
    service leaves it alone (qmp/migration.py: guest_did_io)."""
    async with two_local_hosts(lab_tmp_path, chunk_mib=32, poll_interval_s=0.5) as lab:
        _, dest, _ = await arrive_late(lab, "short3", late=False, ran=True)
        await until(lambda: "short3" in {v["vm"] for v in
                                         lab.hosts["dst"].service.monitor.snapshot()}, 60,
                    "dst's service watching the VM")
        await until(lambda: lab.hosts["dst"].service.monitor.idle(extensions=False), 60,
                    "dst's service done with the arrival")
        assert dest.returncode is None  # not stopped
        assert (await qmp(dest, "query-status"))["status"] == "paused"
