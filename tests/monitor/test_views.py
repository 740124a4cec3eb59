"""The view check (issue 28 items 2 and 3) over the in-memory hypervisor and volumes: at a
VM's appearance (refresh before a guest that has not run, pause one that has, nothing for
an incoming migration, nothing with ``Checks(check_views=False)``), and the audit at every
full poll (a view shrunk under a running guest pauses it for good; an extension in flight
or a migration is left alone; one read per VG per round)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from hypothesis import given
from hypothesis import strategies as st

from autoextend.checks import ALL_ON, Checks
from autoextend.lab.waiting import until
from autoextend.metrics import Metrics
from autoextend.monitor.context import Sizes
from autoextend.monitor.core import Monitor
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.migration import MigrationInfo, Phase, Role
from autoextend.monitor.observer import StaleViewFound
from autoextend.monitor.protocols import DriveInfo, DriveIoError, OutcomeKind, PauseReason
from autoextend.monitor.viewcheck import ViewAction
from autoextend.monitor.views import PerVolumeSizes, audit, judge, read_sizes
from autoextend.monitor.vm import ViewSuspect
from autoextend.monitor.vmstate import VmMachine
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, VOL, Rig

MiB = 1 << 20
VOL2 = VolumeRef("vg0", "lv2")
VOL3 = VolumeRef("vg1", "lv3")


class CountingSizes:
    """PerVolumeSizes that records each call (one per VG per round is the bound)."""

    def __init__(self, rig: Rig) -> None:
        self.inner = PerVolumeSizes(rig.volumes)
        self.calls: list[tuple[str, tuple[VolumeRef, ...]]] = []

    async def view_sizes(self, vg: str, volumes: Sequence[VolumeRef]) -> dict[VolumeRef, Sizes]:
        self.calls.append((vg, tuple(volumes)))
        return await self.inner.view_sizes(vg, volumes)


def make_rig(checks: Checks = ALL_ON) -> tuple[Rig, CountingSizes]:
    rig = Rig()
    sizes = CountingSizes(rig)
    rig.monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, observer=rig.tally,
                          views=rig.volumes, view_sizes=sizes, checks=checks)
    return rig, sizes


def entry(rig: Rig, vm: str = "vm1") -> dict[str, object]:
    return next((v for v in rig.monitor.snapshot() if v["vm"] == vm), {})


def stale(rig: Rig, volume: VolumeRef, view_mib: int, metadata_mib: int) -> None:
    """This host sees ``view_mib``; the metadata says ``metadata_mib``."""
    rig.volumes.sizes[volume] = view_mib * MiB
    rig.volumes.metadata[volume] = metadata_mib * MiB


async def test_a_prelaunch_guest_on_a_stale_view_is_refreshed_and_stopped_before_it_runs(
) -> None:
    """Refreshed for the next start, and this process stopped (it opened the stale view)."""
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    stale(rig, VOL, 256, 512)
    rig.hv.vms["vm1"].running, rig.hv.vms["vm1"].reason = False, PauseReason.OTHER
    rig.hv.vms["vm1"].prelaunch = True
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.kills == ["vm1"], describe=rig.describe)
        assert rig.volumes.sizes[VOL] == 512 * MiB  # refreshed
        assert rig.hv.thresholds == []  # nothing armed on the process that saw it stale
        assert rig.tally.stale_views == 1 and rig.tally.stale_view_pauses == 0
        assert rig.hv.suspends == [] and rig.hv.resumes == []
        # Started again (on the refreshed view): checked, nothing stale, armed.
        rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 4096 * MiB)})
        rig.hv.vms["vm1"].running, rig.hv.vms["vm1"].reason = False, PauseReason.OTHER
        rig.hv.vms["vm1"].prelaunch = True
        await until(lambda: rig.hv.thresholds == [("vm1", "vda", 448 * MiB)],
                    describe=rig.describe)
        assert rig.hv.kills == ["vm1"] and rig.tally.stale_views == 1
        tg.cancel_scope.cancel()


async def test_a_guest_that_ran_on_a_stale_view_is_paused_and_never_resumed() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    stale(rig, VOL, 256, 512)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.suspends == ["vm1"], describe=rig.describe)
        await until(lambda: entry(rig).get("paused") == "user", describe=rig.describe)
        assert rig.volumes.sizes[VOL] == 256 * MiB  # left as found, for the operator
        assert rig.tally.stale_views == 1 and rig.tally.stale_view_pauses == 1
        assert "vda" in entry(rig)["stale_views"]  # type: ignore[operator]
        # Even an ENOSPC pause on a drive with room is not resumed while the hold stands.
        rig.hv.vms["vm1"].reason = PauseReason.ENOSPC
        rig.hv.write("vm1", "vda", 1)
        for _ in range(5):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.resumes == []
        assert "stale view" in str(entry(rig)["last_action"])
        tg.cancel_scope.cancel()


async def test_check_views_off_neither_refreshes_nor_pauses() -> None:
    rig, sizes = make_rig(Checks(check_views=False))
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    stale(rig, VOL, 256, 512)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        for _ in range(3):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.volumes.sizes[VOL] == 256 * MiB
        assert rig.hv.suspends == [] and sizes.calls == [] and rig.tally.stale_views == 0
        tg.cancel_scope.cancel()


async def test_an_incoming_migration_is_left_to_the_migration_protocol() -> None:
    rig, sizes = make_rig()
    rig.hv.migrations["vm1"] = MigrationInfo(Role.DESTINATION, Phase.ACTIVE)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    stale(rig, VOL, 256, 512)
    rig.hv.vms["vm1"].running, rig.hv.vms["vm1"].reason = False, PauseReason.MIGRATION
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: entry(rig).get("migration") == "incoming", describe=rig.describe)
        for _ in range(3):  # full polls: the audit skips a migrating VM
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.suspends == [] and rig.tally.stale_views == 0
        assert sizes.calls == []
        tg.cancel_scope.cancel()


async def test_the_audit_pauses_a_guest_whose_view_shrank_within_one_full_poll() -> None:
    rig, sizes = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 4096 * MiB)})
    rig.hv.add_vm("vm2", {"vda": (VOL2, 512 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: len(rig.hv.thresholds) == 2, describe=rig.describe)
        await rig.advance(SETTINGS.poll_interval_s)  # a full poll: all fine
        assert rig.hv.suspends == []
        stale(rig, VOL, 256, 512)  # vm1's view shrank behind the service's back
        await rig.advance(SETTINGS.poll_interval_s)
        await until(lambda: rig.hv.suspends == ["vm1"], describe=rig.describe)
        assert rig.tally.stale_view_pauses == 1
        assert "audit" in str(entry(rig)["stale_views"])
        calls = len(sizes.calls)
        for _ in range(4):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.suspends == ["vm1"] and rig.hv.resumes == []
        # Once held, vm1 is not read again; vm2 is read once per round (one VG: one call).
        assert all(vols == (VOL2,) for _, vols in sizes.calls[calls:])
        assert len(sizes.calls) - calls == 4
        tg.cancel_scope.cancel()


async def test_the_audit_leaves_a_drive_with_an_extension_in_flight() -> None:
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        rig.ext.gate = anyio.Event()
        rig.hv.write("vm1", "vda", 200 * MiB)  # crosses: an extension starts, held
        await until(lambda: rig.ext.calls == 1, describe=rig.describe)
        stale(rig, VOL, 256, 384)  # the metadata grew ahead of this host's view
        for _ in range(3):
            await rig.advance(SETTINGS.poll_interval_s, extensions=False)
        assert rig.hv.suspends == []
        rig.ext.gate.set()
        await until(lambda: rig.volumes.sizes[VOL] >= 384 * MiB, describe=rig.describe)
        await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.suspends == [] and rig.tally.stale_views == 0
        tg.cancel_scope.cancel()


async def test_the_audit_leaves_a_drive_whose_failed_extension_awaits_its_retry() -> None:
    """A timed-out request served late: the metadata grew, nothing is in flight here, the
    retry (which refreshes) is due later. Not a stale view to pause for."""
    rig, _ = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        rig.ext.fail_with = OutcomeKind.REJECTED  # retried after retry_max_s (2 s)
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.ext.calls >= 1 and rig.state() is ThresholdState.EXCEEDED,
                    describe=rig.describe)
        stale(rig, VOL, 256, 384)  # served late, elsewhere
        polls = rig.monitor.polls
        await rig.advance(SETTINGS.poll_interval_s)  # a full poll, before the retry
        assert rig.monitor.polls > polls and rig.state() is ThresholdState.EXCEEDED
        assert rig.hv.suspends == [] and rig.tally.stale_views == 0
        rig.ext.fail_with = None
        for _ in range(3):  # the retry comes due: it extends and refreshes
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.volumes.sizes[VOL] >= 384 * MiB
        assert rig.hv.suspends == [] and rig.tally.stale_views == 0
        tg.cancel_scope.cancel()


async def test_one_read_per_volume_group() -> None:
    rig, sizes = make_rig()
    for volume in (VOL, VOL2, VOL3):
        rig.volumes.sizes[volume] = 64 * MiB
    found = await read_sizes(sizes, [VOL, VOL3, VOL2, VOL])
    assert sorted(vg for vg, _ in sizes.calls) == ["vg0", "vg1"]
    assert found == {v: Sizes(64 * MiB, 64 * MiB) for v in (VOL, VOL2, VOL3)}


@given(view=st.integers(0, 1 << 40), metadata=st.integers(0, 1 << 40), in_flight=st.booleans(),
       ran=st.booleans())
def test_judge_never_lets_a_stale_view_pass_unless_an_extension_will_refresh_it(
    view: int, metadata: int, in_flight: bool, ran: bool
) -> None:
    action = judge(Sizes(view, metadata), in_flight=in_flight, guest_has_run=ran)
    if view > metadata:
        assert action is ViewAction.SHRUNK
    elif view == metadata or in_flight:
        assert action is ViewAction.OK
    else:
        assert action is (ViewAction.PAUSE if ran else ViewAction.REFRESH)


def test_the_metric_counts_by_when_and_pauses() -> None:
    metrics = Metrics()
    for when, action in (("appear", "refresh"), ("audit", "pause"), ("audit", "pause")):
        metrics.notify(StaleViewFound("vm1", "vda", VOL, when, 1, 2, action))
    sample = metrics.registry.get_sample_value
    assert sample("autoextend_stale_views_total", {"when": "appear"}) == 1
    assert sample("autoextend_stale_views_total", {"when": "audit"}) == 2
    assert sample("autoextend_stale_views_total", {"when": "start"}) == 0
    assert sample("autoextend_stale_view_pauses_total") == 2
    metrics.notify(StaleViewFound("vm1", "vda", VOL, "audit", 2, 1, "shrunk"))
    assert sample("autoextend_shrunk_view_pauses_total") == 1
    assert sample("autoextend_stale_views_total", {"when": "audit"}) == 2  # not a stale one


class OneVm:
    """A VM as the audit sees it (the VmView protocol), recording what is posted to it."""

    def __init__(self, name: str, drives: dict[str, DriveState]) -> None:
        self.name = name
        self.machine = VmMachine(views_checked=True, migration_stale=False)
        self.drives = drives
        self.posted: list[object] = []

    def post(self, message: object) -> None:
        self.posted.append(message)

    def wake_at(self, when: float) -> None:
        pass

    def start_extension(self, d: DriveState, info: object = None) -> None:
        pass


async def test_the_audit_leaves_a_source_whose_view_is_frozen_before_it_knows_it_migrates(
) -> None:
    """The extension found the VM migrating out (``may_refresh`` asks the hypervisor) and
    extended without a refresh (``deferred_sizes``) before the VM's machine stepped to
    migrating-out: its view is stale on purpose (monitor/migration.py), not one to pause
    for. The same VM without the deferred size is a suspect."""
    rig, sizes = make_rig()
    stale(rig, VOL, 256, 384)
    info = DriveInfo("vm1", "vda", "node-vda", "/dev/vg0/lv1", 4096 * MiB, 0, 256 * MiB, 0)
    vm = OneVm("vm1", {"vda": DriveState(info, VOL, 8192 * MiB, ThresholdState.SET)})
    vm.machine.deferred_sizes["vda"] = 384 * MiB
    assert await audit(rig.monitor.ctx, ALL_ON, [vm]) == 0
    assert vm.posted == []
    vm.machine.deferred_sizes.clear()
    assert await audit(rig.monitor.ctx, ALL_ON, [vm]) == 1
    assert vm.posted == [ViewSuspect("vm1", ("vda",))]
    assert await audit(rig.monitor.ctx, Checks(check_views=False), [vm]) == 0


def paused_past_its_view(rig: Rig, past: int) -> None:
    """vm1's guest wrote its 256 MiB view full and paused for ENOSPC with its failed writes
    ending ``past`` bytes beyond the view's end (QEMU counts them in its highest offset);
    then the SPM served this host's extension (to 320 MiB) while the service was down."""
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    rig.hv.write("vm1", "vda", 256 * MiB + past, events=False)
    rig.hv.pause("vm1", PauseReason.ENOSPC, (DriveIoError("vda", "/dev/vg0/lv1", True),))
    stale(rig, VOL, 256, 320)


async def test_a_guest_paused_for_enospc_at_its_views_end_gets_its_grown_view_and_resumes(
) -> None:
    """The service died with this host's extension in flight; the SPM grew the volume after.
    At the restart the view is behind the metadata under a guest that paused for ENOSPC at
    the view's end: refreshed, re-armed and resumed, never held as a stale view."""
    rig, _ = make_rig()
    paused_past_its_view(rig, 320 * 1024)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        # This host's view caught up (and grew on: the drive was still inside its
        # watermark, so it was extended again before the resume, as at any ENOSPC).
        assert rig.volumes.sizes[VOL] >= 320 * MiB
        assert rig.hv.suspends == [] and rig.tally.stale_views == 0
        assert not entry(rig)["stale_views"]
        assert rig.hv.thresholds and rig.hv.thresholds[-1][2] > 256 * MiB  # re-armed
        tg.cancel_scope.cancel()


async def test_a_guest_whose_failed_writes_lie_far_past_its_view_stays_held() -> None:
    """Failed writes far past the view's end: its qcow2 allocates past data that another
    host wrote beyond this view (the stale-view hazard): paused, never resumed."""
    rig, _ = make_rig()
    paused_past_its_view(rig, 40 * MiB)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.suspends == ["vm1"], describe=rig.describe)
        for _ in range(5):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.resumes == [] and "vda" in entry(rig)["stale_views"]  # type: ignore[operator]
        assert rig.tally.stale_views == 1 and rig.tally.stale_view_pauses == 1
        tg.cancel_scope.cancel()
