"""An ENOSPC pause handed through a migration (``monitor/handoff.py``, ``pauseclaims.py``):
the destination resumes an arrived pause only on its source's adopted claim; the source
claims its own ENOSPC pauses, keeps the claim through the migration and for a while after
the guest left, and claims nothing else. The monitor over the in-memory hypervisor; the
records' codec and rule are in tests/spm/test_handoff.py, real guests in
tests/e2e/test_migration_handoff.py."""

from __future__ import annotations

from collections.abc import Collection

import anyio
import pytest

from autoextend.errors import AutoextendError
from autoextend.lab.waiting import until
from autoextend.monitor import handoff, pauseclaims
from autoextend.monitor.arrival import Baseline, ClaimedPause
from autoextend.monitor.core import Monitor
from autoextend.monitor.migration import MigrationInfo, Phase, Role
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import OutcomeKind, PauseReason, VmResumed
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, VOL, Rig, Views, arrive_paused


def entry(rig: Rig) -> dict[str, object]:
    return next((v for v in rig.monitor.snapshot() if v["vm"] == "vm1"), {})


class FakeHandoff:
    """The shared records as a destination sees them: a claim appears when the test says."""

    def __init__(self) -> None:
        self.claim: ClaimedPause | None = None
        self.adopted: list[tuple[str, ClaimedPause]] = []
        self.fail_adopt = False
        self.baselines = 0

    async def baseline(self) -> Baseline:
        self.baselines += 1
        return {1: (7, 10)}

    async def claimed(self, vm: str, volumes: Collection[VolumeRef],
                      baseline: Baseline) -> ClaimedPause | None:
        assert baseline == {1: (7, 10)}
        if self.claim is None or not self.claim.volumes <= set(volumes):
            return None
        return self.claim

    async def adopt(self, vm: str, pause: ClaimedPause) -> None:
        if self.fail_adopt:
            raise AutoextendError("tombstone not written (injected)")
        self.adopted.append((vm, pause))


def make_rig(fake: FakeHandoff | None) -> tuple[Rig, Views]:
    rig = Rig()
    views = Views(rig)
    rig.monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, observer=rig.tally,
                          views=views, handoff=fake)
    return rig, views


async def test_arrived_pause_is_resumed_on_an_adopted_claim() -> None:
    fake = FakeHandoff()
    rig, views = make_rig(fake)
    arrive_paused(rig)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: views.refreshed == [VOL], describe=rig.describe)
        rig.hv.vms["vm1"].reason = PauseReason.IO_ERROR  # QEMU's migrated run state
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED))
        await until(lambda: fake.baselines == 1, describe=rig.describe)
        for _ in range(3):  # no claim yet: waiting, not resumed (nor by the io-error policy)
            await rig.advance(handoff.LOOK_S)
        assert rig.hv.resumes == [] and fake.adopted == []
        assert entry(rig)["state"] == "paused-other"
        fake.claim = ClaimedPause(2, 1234, frozenset({VOL}))
        refreshed = len(views.refreshed)
        await rig.advance(handoff.LOOK_S)
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        assert fake.adopted == [("vm1", fake.claim)]
        assert len(views.refreshed) == refreshed + 1  # refreshed again before the resume
        assert "adopted host 2's ENOSPC pause" in str(entry(rig)["last_action"]) or \
            "resumed after enospc" in str(entry(rig)["last_action"])
        tg.cancel_scope.cancel()


async def test_arrived_pause_with_a_full_drive_is_extended_first() -> None:
    fake = FakeHandoff()
    rig, views = make_rig(fake)
    arrive_paused(rig)
    rig.hv.vms["vm1"].drives["vda"].allocation = 250 * MiB  # inside the watermark
    fake.claim = ClaimedPause(3, 99, frozenset({VOL}))
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: views.refreshed == [VOL], describe=rig.describe)
        rig.hv.vms["vm1"].reason = PauseReason.USER  # libvirt's word for it
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED))
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        assert rig.ext.calls >= 1 and rig.volumes.sizes[VOL] > 256 * MiB
        tg.cancel_scope.cancel()


async def test_unclaimed_arrived_pause_stays_paused() -> None:
    """The negative control: an operator's pause (no host claims it) is never resumed."""
    fake = FakeHandoff()
    rig, _ = make_rig(fake)
    arrive_paused(rig)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: entry(rig).get("migration") == "incoming", describe=rig.describe)
        rig.hv.vms["vm1"].reason = PauseReason.USER
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED))
        await until(lambda: fake.baselines == 1, describe=rig.describe)
        for _ in range(int(handoff.WAIT_S / handoff.LOOK_S) + 5):
            await rig.advance(handoff.LOOK_S)
        assert "no host claimed" in str(entry(rig)["last_action"])
        fake.claim = ClaimedPause(2, 5, frozenset({VOL}))  # too late: never looked at again
        for _ in range(5):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.resumes == [] and fake.adopted == []
        assert entry(rig)["state"] == "paused-other"
        tg.cancel_scope.cancel()


async def test_no_resume_until_the_tombstone_is_written() -> None:
    fake = FakeHandoff()
    fake.fail_adopt = True
    fake.claim = ClaimedPause(2, 7, frozenset({VOL}))
    rig, _ = make_rig(fake)
    arrive_paused(rig)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: entry(rig).get("migration") == "incoming", describe=rig.describe)
        rig.hv.vms["vm1"].reason = PauseReason.IO_ERROR
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED))
        for _ in range(5):
            await rig.advance(handoff.LOOK_S)
        assert rig.hv.resumes == []
        fake.fail_adopt = False
        await rig.advance(handoff.LOOK_S)
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        tg.cancel_scope.cancel()


# ------------------------------------------------------------------ the source's claims


async def test_source_claims_its_enospc_pause_through_the_migration() -> None:
    rig, views = make_rig(FakeHandoff())
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        assert rig.monitor.pause_claims() == []
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.ACTIVE))
        await until(lambda: entry(rig).get("migration") == "migrating-out")
        rig.hv.write("vm1", "vda", 200 * MiB)  # crosses the threshold
        await until(lambda: rig.ext.unrefreshed == 1, describe=rig.describe)
        rig.hv.write("vm1", "vda", 200 * MiB)  # outruns the frozen view: ENOSPC pause
        await until(lambda: entry(rig).get("paused") == "enospc", describe=rig.describe)
        claims = rig.monitor.pause_claims()
        assert [(c.vm, c.volume) for c in claims] == [("vm1", VOL)]
        # The migration's own pause (finish-migrate, postmigrate) keeps the claim.
        rig.hv.pause("vm1", PauseReason.MIGRATION)
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.COMPLETED))
        await until(lambda: entry(rig).get("migration") == "departed")
        assert rig.monitor.pause_claims() == claims  # same pause, same identity
        assert rig.hv.resumes == [] and views.refreshed == []  # never resumed here
        # Kept for RETAIN_S after the departure was seen, then dropped.
        await rig.advance(pauseclaims.RETAIN_S - 1)
        assert rig.monitor.pause_claims() == claims
        await rig.advance(2)
        assert rig.monitor.pause_claims() == []
        tg.cancel_scope.cancel()


async def test_source_keeps_a_dropped_migrated_vms_claim_and_forgets_a_resumed_one() -> None:
    rig, _ = make_rig(FakeHandoff())
    rig.ext.fail_with = OutcomeKind.REJECTED  # the drive cannot grow: the pause lasts
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        rig.hv.write("vm1", "vda", 400 * MiB)
        await until(lambda: entry(rig).get("paused") == "enospc", describe=rig.describe)
        first = rig.monitor.pause_claims()
        assert len(first) == 1
        rec = rig.hv.vms["vm1"]  # someone else resumed it: the claim goes
        rec.running, rec.reason, rec.errors = True, None, ()
        rig.hv.emit(VmResumed("vm1"))
        await until(lambda: rig.monitor.pause_claims() == [], describe=rig.describe)
        rig.hv.pause("vm1", PauseReason.USER)  # an operator's pause: never claimed
        await rig.advance(SETTINGS.poll_interval_s)
        assert rig.monitor.pause_claims() == []
        tg.cancel_scope.cancel()


def test_tombstones_outlive_retained_claims() -> None:
    from autoextend.spm import handoff as records

    # The source may see the departure up to 180 s late (a look waiting on libvirt's job).
    assert records.TOMBSTONE_S >= pauseclaims.RETAIN_S + 180


@pytest.mark.parametrize(("reason", "resumed"), [
    (PauseReason.IO_ERROR, ["vm1"]), (PauseReason.USER, [])])
async def test_local_mode_io_error_arrival_follows_the_resume_policy(
        reason: PauseReason, resumed: list[str]) -> None:
    """No claim can come in local mode: QEMU's migrated ``io-error`` is an I/O error pause
    (probed, then resumed under policy auto); an operator's pause stays."""
    rig = Rig()

    async def ok(path: str) -> bool:
        return True

    rig.monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, observer=rig.tally,
                          views=Views(rig), probe=ok)
    arrive_paused(rig)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: entry(rig).get("migration") == "incoming", describe=rig.describe)
        rig.hv.vms["vm1"].reason = reason
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED))
        await until(lambda: "local mode" in str(entry(rig).get("last_action")),
                    describe=rig.describe)
        for _ in range(10):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.resumes == resumed
        tg.cancel_scope.cancel()
