"""Issue 31, findings 1 and 3, at the smallest scale (real QEMU guests, QMP, local mode).

(a) The QMP management protocol (docs/migration.md): the destination QEMU does not run on
arrival (``-S``), and the management prepares the destination's views (``autoextend volume
prepare --direct``, no service needed) after the switchover and before ``cont``. The case:
the destination's view was attached, then the source extended and refreshed its own view
(no migration known yet), and the destination host's autoextend never sees the incoming VM
(down, as the soak's faults leave it; here its QMP socket is where no service looks). With
the protocol the guest never runs on a view smaller than what it wrote and its data
verifies; without it (the negative control: QEMU's autostart, no prepare) it runs there on
the short view. Its guest verified even before the destination had ``late-block-activate``
(QEMU then kept the stale 32 MiB node length through the prepare and ``cont``): its one L2
table and its refcount block lie in the image's first clusters, and it reads its data back
only after its own writes on the destination have raised the node's length past it; the
soak's guest needed an L2 table past the stale length first (``test_migration_node_length``).

(b) A source paused for ENOSPC whose extension lands while a migration out runs, with
QEMU's ``MIGRATION`` events off (nothing tells the service): the resume path's
``query-migrate`` right before ``cont`` finds the migration and the source is never
resumed (QEMU's own state and the commands it got say so). The negative control gives the
monitor a hypervisor whose resume is a bare ``cont`` (as the QMP backend's was), and QEMU
runs the guest on the source during its migration.

What "written" means here: the guest's highest write on the source's protocol node
(``wr_highest_offset``), bounded by the source's view. QEMU raises ``wr_highest_offset`` for
a write that failed, too: a guest paused for ENOSPC on a 16 MiB device read 16 MiB + 320 KiB.
That is what the soak's check took for "written" (its four reports were 320 to 704 KiB past
the view); no write can have succeeded past the source's view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from autoextend.lab.chaos import highest_write
from autoextend.lab.guest import GuestJob
from autoextend.lab.migrate import (
    MigrationLab,
    node_length,
    prepare_direct,
    start_destination,
    start_migration,
    switch_over,
    two_local_hosts,
)
from autoextend.lab.qemu import QemuVm
from autoextend.lab.singlehost import lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev
from autoextend.monitor.protocols import Extender, ExtendOutcome, Hypervisor, RefreshGate
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import VolumeRef

pytestmark = pytest.mark.slow
MiB = 1 << 20
START_MIB = 32
# One extension (32 MiB chunk at the first crossing) covers the whole job: the guest needs
# none after the switchover, where no autoextend watches it.
JOB = GuestJob(mib=40, rate_kib_s=1024, seed=31)
HELD_BPS = 256 << 10


async def qmp(vm: QemuVm, command: str, args: dict[str, Any] | None = None) -> Any:
    async with vm.qmp("test") as client:
        return await client.execute(command, args)


def extends(lab: MigrationLab, host: str, vm: str) -> int:
    for v in lab.hosts[host].service.monitor.snapshot():
        if v["vm"] == vm and v["drives"]:
            return int(v["drives"][0].get("extends", 0))
    return 0


async def written(source: QemuVm, source_device: str) -> int:
    """What the guest can have written on the source: its highest write, bounded by the
    source's view (a failed write raises ``wr_highest_offset`` too)."""
    highest = await highest_write(source)
    assert highest is not None
    return min(highest, loopdev.size_of(source_device))


def past_old_view(vm: QemuVm, source_device: str) -> Any:
    """While the migration is held: the guest has written past the destination's view."""
    async def check() -> bool:
        return await written(vm, source_device) > START_MIB * MiB
    return check


async def source_ahead(lab: MigrationLab, name: str, *, protocol: bool
                       ) -> tuple[QemuVm, QemuVm, str, str, VolumeRef]:
    """Boot ``name`` on src, attach dst's view and start the destination QEMU (its socket
    where dst's autoextend does not look), then let the source extend and refresh."""
    vm, volume, src_device = await lab.start_guest("src", name, JOB, start_mib=START_MIB,
                                                   virtual_mib=256)
    dst_device = await lab.views("dst").attach(volume)
    unwatched = lab.directory / "unwatched-qmp"
    unwatched.mkdir(exist_ok=True)
    dest = await start_destination(vm, [dst_device], lab.directory / "vms" / f"{name}-dst",
                                   unwatched, autostart=not protocol)
    lab.stack.push_async_callback(dest.stop)
    await until(lambda: extends(lab, "src", name) >= 1
                and loopdev.size_of(src_device) > loopdev.size_of(dst_device), 180,
                "the source extending and refreshing its view")
    assert loopdev.size_of(dst_device) == START_MIB * MiB
    return vm, dest, src_device, dst_device, volume


async def test_protocol_destination_never_runs_on_a_smaller_view(lab_tmp_path: Path) -> None:
    async with two_local_hosts(lab_tmp_path, chunk_mib=32, poll_interval_s=0.5) as lab:
        vm, dest, src_device, dst_device, volume = await source_ahead(lab, "prot1",
                                                                      protocol=True)
        migration = await start_migration(vm, dest, lab.directory / "prot1.mig",
                                          max_bandwidth=HELD_BPS)
        await until(past_old_view(vm, src_device), 120, "writes past the old view")
        seen: dict[str, Any] = {}

        async def check() -> None:  # right before the guest may run on the destination
            seen["written"] = await written(vm, src_device)
            seen["view"] = loopdev.size_of(dst_device)
            seen["status"] = (await qmp(dest, "query-status"))["status"]

        prepared = lambda: prepare_direct(lab.volumes_config("dst"), [volume])  # noqa: E731
        assert await switch_over(migration, prepared, check) == "completed"
        # QEMU took the prepared view's length when it activated the drive at cont
        # (late-block-activate), not the stale one (test_migration_node_length.py).
        seen["node"] = await node_length(dest, "file0")
        assert seen["node"] is not None and seen["node"] >= seen["view"], seen
        assert seen["status"] == "paused", seen  # held by -S until the cont
        assert seen["written"] > START_MIB * MiB, seen  # it wrote past the old view
        assert seen["view"] >= seen["written"], seen
        await vm.stop()
        result = await dest.result(timeout=300)
        assert result.verified, result
        assert result.written_mib == JOB.mib
        assert await dest.wait_exit(timeout=60) == 0  # it holds the image until it exits
        check_img = await qemu_img_check(dst_device)
        assert check_img.clean, check_img


async def test_negative_control_autostart_runs_on_the_short_view(lab_tmp_path: Path) -> None:
    async with two_local_hosts(lab_tmp_path, chunk_mib=32, poll_interval_s=0.5) as lab:
        vm, dest, src_device, dst_device, _ = await source_ahead(lab, "neg1", protocol=False)
        migration = await start_migration(vm, dest, lab.directory / "neg1.mig",
                                          max_bandwidth=HELD_BPS)
        await until(past_old_view(vm, src_device), 120, "writes past the old view")
        assert await migration.finish() == "completed"

        async def arrived() -> bool:
            return bool((await qmp(dest, "query-status"))["status"] != "inmigrate")

        await until(arrived, 60, "the destination loading the migration")
        status = await qmp(dest, "query-status")
        wrote = await written(vm, src_device)
        view = loopdev.size_of(dst_device)
        assert status["running"] is True, status  # QEMU's autostart: it runs at once
        assert view < wrote, (view, wrote)  # on a view smaller than what it wrote


class LandsThenHeld:
    """An extender that holds each extension until ``start``, lets it land (extended and
    refreshed: no migration was known when it was asked), then holds its OK until ``go``:
    the window in which a migration may start before the resume."""

    def __init__(self, inner: Extender) -> None:
        self.inner = inner
        self.start = anyio.Event()
        self.landed = anyio.Event()
        self.go = anyio.Event()

    async def extend(self, volume: VolumeRef, size: int, *, refresh: bool = True,
                     may_refresh: RefreshGate | None = None) -> ExtendOutcome:
        await self.start.wait()
        outcome = await self.inner.extend(volume, size, refresh=refresh,
                                          may_refresh=may_refresh)
        self.landed.set()
        await self.go.wait()
        return outcome


class BareCont:
    """The service's hypervisor, but its resume is a bare ``cont`` (through the lab's own
    QMP socket), as the QMP backend's was before the check: the negative control."""

    def __init__(self, inner: QmpHypervisor, vm: QemuVm) -> None:
        self.inner = inner
        self.vm = vm
        self.conts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def resume(self, vm: str) -> None:
        self.conts += 1
        await qmp(self.vm, "cont")


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "negative-control"])
async def test_paused_source_is_never_resumed_while_migrating_out(
        lab_tmp_path: Path, guard: bool) -> None:
    quiet = {"qmp": {"drive_watch_interval_s": 3600.0}}  # no capability poll, no drive poll
    async with lab_host(workdir=lab_tmp_path, chunk_mib=16, poll_interval_s=600.0,
                        extra=quiet) as host:
        monitor = host.service.monitor
        held = LandsThenHeld(monitor.extender)
        monitor.extender = held
        hv = host.service.hypervisor
        assert isinstance(hv, QmpHypervisor)
        guest = await host.start_guest("mig3", GuestJob(mib=40, rate_kib_s=2048), start_mib=16,
                                       virtual_mib=256)
        vm = guest.vm
        bare = BareCont(hv, vm)
        if not guard:
            monitor.ctx.hypervisor = cast(Hypervisor, bare)
        # The crossing's extension is held; the guest runs out of its 16 MiB and pauses.
        await until(_paused(vm), 180, "the guest paused for ENOSPC")
        await until(lambda: monitor.idle(extensions=False), 30, "the pause fully seen")
        held.start.set()
        with anyio.fail_after(60):
            await held.landed.wait()  # extended and refreshed here
        assert loopdev.size_of(guest.device) > 16 * MiB
        # A migration out starts now, with MIGRATION events off: nothing tells the service.
        (lab_tmp_path / "elsewhere").mkdir()
        dest = await start_destination(vm, [guest.device], lab_tmp_path / "dest",
                                       lab_tmp_path / "elsewhere", autostart=False)
        try:
            uri = f"unix:{lab_tmp_path / 'mig3.mig'}"
            await qmp(dest, "migrate-incoming", {"uri": uri})
            await qmp(vm, "migrate-set-parameters", {"max-bandwidth": HELD_BPS})
            # The lab starts QEMU with the events on (as libvirt does); a management may
            # turn them off at any time, and the service reads the capability only now
            # and then: it still believes them on, and none comes.
            await qmp(vm, "migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": False}]})
            await qmp(vm, "migrate", {"uri": uri})
            sent = hv.commands_sent("mig3")[0]
            held.go.set()  # the OK reaches the monitor: re-arm, then the resume path
            await until(lambda: hv.commands_sent("mig3")[0] > sent + 1, 30,
                        "the monitor acting on the OK")
            await anyio.sleep(2.0)  # time is the subject: any resume would have come by now
            status = await qmp(vm, "query-status")
            mig = await qmp(vm, "query-migrate")
            trace = [name for kind, name in hv.commands_sent("mig3")[1]]
            if guard:
                assert mig["status"] in ("setup", "active"), mig
                assert status["running"] is False, status
                assert "cont" not in trace and "RESUME" not in trace, trace
                assert "query-migrate" in trace, trace
                assert entry(host, "mig3")["last_action"] == (
                    "left paused: migrating-out (resumed where it runs next)")
            else:  # without the check QEMU runs the guest on its source mid-migration
                assert mig["status"] in ("setup", "active"), mig
                assert bare.conts >= 1 and status["running"] is True, (status, trace)
            await qmp(vm, "migrate_cancel")
        finally:
            await dest.stop()


def entry(host: Any, vm: str) -> dict[str, Any]:
    return next(v for v in host.service.monitor.snapshot() if v["vm"] == vm)


def _paused(vm: QemuVm) -> Any:
    async def check() -> bool:
        return bool((await qmp(vm, "query-status"))["status"] == "io-error")
    return check
