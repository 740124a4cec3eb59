"""Live migration: the pure rules (every state x every look), QEMU's replies mapped to them,
and the monitor carrying them out against the in-memory hypervisor.

The real guests migrating between two hosts are in tests/e2e/test_migration.py.
"""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.errors import HypervisorError
from autoextend.lab.waiting import until
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.migration import (
    ENDED,
    NOT_MIGRATING,
    MigAction,
    MigrationInfo,
    MigState,
    Phase,
    Role,
    may_arm,
    may_refresh,
    may_resume,
    step,
)
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import DriveInfo, DrivesChanged, PauseReason
from autoextend.qmp.errors import MalformedReply
from autoextend.qmp.migration import migration_info, migration_phase
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, Rig, arrive_paused, views_rig

VOL = VolumeRef("vg0", "lv1")
infos = st.builds(MigrationInfo, st.sampled_from(Role), st.sampled_from(Phase))
states = st.sampled_from(MigState)

# ------------------------------------------------------------------ the pure rules


@given(states, infos)
def test_step_is_total_and_keeps_the_rules(state: MigState, info: MigrationInfo) -> None:
    result = step(state, info)
    actions = set(result.actions)
    # A view is refreshed only where the guest will run: never on a departed source, and
    # never while a migration out is (still) running.
    if MigAction.REFRESH_ALL in actions:
        assert result.state in (MigState.NONE, MigState.INCOMING)
    if result.state is MigState.MIGRATING_OUT:
        assert MigAction.REFRESH_ALL not in actions and MigAction.REARM not in actions
    assert not may_refresh(MigState.MIGRATING_OUT) and not may_refresh(MigState.DEPARTED)
    # Arming comes only with a refresh first (views grew where the guest runs next).
    if MigAction.REARM in actions:
        assert MigAction.REFRESH_ALL in actions
    if state is MigState.DEPARTED:
        assert result == step(state, NOT_MIGRATING) and result.state is MigState.DEPARTED


@given(states, infos)
def test_step_is_idempotent_on_the_same_look(state: MigState, info: MigrationInfo) -> None:
    """Looking twice at the same thing changes nothing more (no second freeze, no second
    failure handling); a VM that runs or will run here may be refreshed again (safe)."""
    first = step(state, info)
    again = step(first.state, info)
    assert again.state is first.state
    assert MigAction.REARM not in again.actions and MigAction.NOTE not in again.actions
    assert MigAction.FREEZE_VIEWS not in again.actions
    if MigAction.REFRESH_ALL in again.actions:
        assert again.state in (MigState.INCOMING, MigState.NONE)
        assert info.role is Role.DESTINATION


@pytest.mark.parametrize(("path", "final", "refreshes"), [
    # source: frozen while it runs; nothing on completion; refresh + rearm on failure
    ([(Role.SOURCE, Phase.SETUP), (Role.SOURCE, Phase.ACTIVE), (Role.SOURCE, Phase.COMPLETED)],
     MigState.DEPARTED, 0),
    ([(Role.SOURCE, Phase.ACTIVE), (Role.SOURCE, Phase.FAILED)], MigState.NONE, 1),
    ([(Role.SOURCE, Phase.ACTIVE), (Role.SOURCE, Phase.CANCELLED)], MigState.NONE, 1),
    # destination: on arrival, while active, and on completion
    ([(Role.DESTINATION, Phase.PENDING), (Role.DESTINATION, Phase.ACTIVE),
      (Role.DESTINATION, Phase.COMPLETED)], MigState.NONE, 3),
    ([(Role.DESTINATION, Phase.PENDING), (Role.DESTINATION, Phase.FAILED)],
     MigState.DEPARTED, 1),
])
def test_migration_paths(path: list[tuple[Role, Phase]], final: MigState,
                         refreshes: int) -> None:
    state = MigState.NONE
    count = 0
    for role, phase in path:
        result = step(state, MigrationInfo(role, phase))
        count += MigAction.REFRESH_ALL in result.actions
        state = result.state
    assert state is final
    assert count == refreshes


def test_permissions() -> None:
    assert may_resume(MigState.NONE)
    assert not any(may_resume(s) for s in MigState if s is not MigState.NONE)
    assert may_arm(MigState.MIGRATING_OUT) and not may_arm(MigState.INCOMING)
    assert not may_arm(MigState.DEPARTED)
    assert may_refresh(MigState.INCOMING)


# ------------------------------------------------------------------ QEMU's words


@pytest.mark.parametrize(("status", "reply", "expected"), [
    ("running", {}, NOT_MIGRATING),
    ("running", {"status": "setup"}, MigrationInfo(Role.SOURCE, Phase.SETUP)),
    ("running", {"status": "active"}, MigrationInfo(Role.SOURCE, Phase.ACTIVE)),
    ("io-error", {"status": "active"}, MigrationInfo(Role.SOURCE, Phase.ACTIVE)),
    ("finish-migrate", {"status": "device"}, MigrationInfo(Role.SOURCE, Phase.ACTIVE)),
    ("postmigrate", {"status": "completed"}, MigrationInfo(Role.SOURCE, Phase.COMPLETED)),
    ("running", {"status": "failed"}, MigrationInfo(Role.SOURCE, Phase.FAILED)),
    ("running", {"status": "cancelled"}, MigrationInfo(Role.SOURCE, Phase.CANCELLED)),
    ("inmigrate", {}, MigrationInfo(Role.DESTINATION, Phase.PENDING)),
    ("inmigrate", {"status": "active"}, MigrationInfo(Role.DESTINATION, Phase.ACTIVE)),
    ("running", {"status": "completed"}, MigrationInfo(Role.DESTINATION, Phase.COMPLETED)),
    ("io-error", {"status": "completed"}, MigrationInfo(Role.DESTINATION, Phase.COMPLETED)),
    ("running", {"status": "some-new-step"}, MigrationInfo(Role.SOURCE, Phase.ACTIVE)),
])
def test_qmp_migration_info(status: str, reply: object, expected: MigrationInfo) -> None:
    assert migration_info("vm1", status, reply) == expected


@pytest.mark.parametrize("reply", [None, [], "active", {"status": 3}, {"status": "x" * 65}])
def test_qmp_malformed_migration_reply(reply: object) -> None:
    with pytest.raises(MalformedReply):
        migration_phase("vm1", reply)


def test_ended_phases() -> None:
    assert {Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED} == ENDED
    assert not MigrationInfo(Role.SOURCE, Phase.FAILED).running
    assert MigrationInfo(Role.SOURCE, Phase.ACTIVE).running


# ------------------------------------------------------------------ the monitor


def entry(rig: Rig) -> dict[str, object]:
    return next((v for v in rig.monitor.snapshot() if v["vm"] == "vm1"), {})


async def test_source_extends_without_refresh_and_resumes_after_failure() -> None:
    rig, views = views_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.ACTIVE))
        await until(lambda: entry(rig).get("migration") == "migrating-out")
        rig.hv.write("vm1", "vda", 200 * MiB)  # crosses the threshold
        await until(lambda: rig.ext.unrefreshed == 1, describe=rig.describe)
        rig.hv.write("vm1", "vda", 200 * MiB)  # outruns the frozen view: ENOSPC pause
        await until(lambda: entry(rig).get("paused") == "enospc", describe=rig.describe)
        await until(lambda: rig.ext.unrefreshed == 2, describe=rig.describe)
        for _ in range(5):  # polls: no more extensions, no resume, no refresh
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.ext.unrefreshed == 2 and rig.ext.calls == 2
        assert rig.hv.resumes == [] and views.refreshed == []
        assert rig.volumes.sizes[VOL] == 256 * MiB  # this host's view never grew
        assert rig.ext.metadata[VOL] == 512 * MiB   # two chunks in metadata
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.FAILED))
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        assert views.refreshed == [VOL]
        assert rig.volumes.sizes[VOL] == 512 * MiB
        assert entry(rig)["migration"] == "none"
        tg.cancel_scope.cancel()


async def test_destination_refreshes_before_arming_and_leaves_arrived_pause_local() -> None:
    """Local mode has no shared record of why the source paused the guest: an arrived
    pause is what the hypervisor here says (``monitor/handoff.py``): an I/O error pause
    follows [resume] policy, and its storage probe fails here (the memory hypervisor's
    paths do not exist), so it stays paused; the mailbox-mode handoff: test_handoff.py."""
    rig, views = views_rig()
    arrive_paused(rig)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: views.refreshed == [VOL], describe=rig.describe)
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.ACTIVE))
        await until(lambda: len(views.refreshed) >= 2, describe=rig.describe)
        assert rig.hv.thresholds == []  # nothing armed while incoming
        # Arrives paused on the source's ENOSPC (io-error, no drive in error here).
        rig.hv.vms["vm1"].reason = PauseReason.IO_ERROR
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED))
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        for _ in range(5):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.hv.resumes == []
        assert entry(rig)["migration"] == "none"
        assert "local mode" in str(entry(rig)["last_action"])
        tg.cancel_scope.cancel()


async def test_departed_source_is_left_alone() -> None:
    rig, views = views_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [])
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.ACTIVE))
        await until(lambda: entry(rig).get("migration") == "migrating-out")
        rig.hv.pause("vm1", PauseReason.MIGRATION)
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.COMPLETED))
        await until(lambda: entry(rig).get("migration") == "departed")
        rig.hv.write("vm1", "vda", 300 * MiB, events=False)
        for _ in range(5):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.ext.calls == 0 and views.refreshed == [] and rig.hv.resumes == []
        tg.cancel_scope.cancel()


async def test_source_freezes_on_news_while_its_looks_fail() -> None:
    """libvirt's looks (block stats, thresholds) can fail for as long as a migration holds
    the domain's job, and the VM's task backs off: the news of the migration, and an ENOSPC
    on a known drive, are still acted on at once (not dropped until a look succeeds)."""
    rig, views = views_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    rig.hv.fail_set_threshold = True  # every look fails where it arms
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: bool(entry(rig).get("drives")), describe=rig.describe)
        await rig.settle()
        assert rig.monitor.snapshot()[0]["drives"][0]["state"] == "unset"
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.ACTIVE))
        await rig.settle()  # no time passes: still backing off
        assert entry(rig)["migration"] == "migrating-out"
        rig.hv.write("vm1", "vda", 300 * MiB)  # past the view: ENOSPC pause
        await until(lambda: rig.ext.unrefreshed == 1, describe=rig.describe)
        await rig.settle()
        assert views.refreshed == [] and rig.hv.resumes == []
        assert rig.volumes.sizes[VOL] == 256 * MiB  # the view stays frozen
        tg.cancel_scope.cancel()


async def test_a_crossing_after_a_failed_rearm_is_acted_on_from_the_event() -> None:
    """A re-arm that failed (libvirt: the migration's job holds ``setBlockThreshold``) left
    the hypervisor's threshold in place; its crossing is ours, and the extension starts from
    the event's numbers, with no look (which would wait behind the same job)."""
    rig, views = views_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        await rig.settle()
        rig.hv.fail_set_threshold = True
        rig.hv.emit(DrivesChanged("vm1"))  # a re-arm, which fails
        await rig.settle()
        assert rig.state() is ThresholdState.UNSET
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.ACTIVE))
        await rig.settle()  # backing off after the failed look: the news is still taken
        assert entry(rig)["migration"] == "migrating-out"

        async def no_look(vm: str) -> list[DriveInfo]:
            raise HypervisorError("stats wait behind the migration (injected)")

        rig.hv.drives = no_look  # type: ignore[method-assign]
        rig.hv.write("vm1", "vda", 200 * MiB)  # crosses the threshold still armed
        await until(lambda: rig.ext.unrefreshed == 1, describe=rig.describe)
        assert views.refreshed == []
        tg.cancel_scope.cancel()


async def test_a_migration_that_begins_while_the_request_is_at_the_spm_freezes_the_view(
) -> None:
    """The check before an extension's refresh is made right before the refresh, not only
    before the request: a request through the SPM can take seconds (a failover), and a
    migration out that begins meanwhile must find this host's view as it was. Found by the
    chaos soak: the source's view grew 16 MiB after it had logged the migration."""
    rig, views = views_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    rig.ext.gate = anyio.Event()  # the request waits at the "SPM"
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.hv.thresholds != [], describe=rig.describe)
        rig.hv.write("vm1", "vda", 200 * MiB)  # crosses the threshold: the request goes out
        await until(lambda: rig.ext.calls == 1, describe=rig.describe)
        rig.hv.migrate("vm1", MigrationInfo(Role.SOURCE, Phase.ACTIVE))
        await until(lambda: entry(rig).get("migration") == "migrating-out",
                    describe=rig.describe)
        rig.ext.gate.set()  # the SPM answers after the migration began
        await until(lambda: rig.ext.unrefreshed == 1, describe=rig.describe)
        for _ in range(3):
            await rig.advance(SETTINGS.poll_interval_s)
        assert rig.volumes.sizes[VOL] == 256 * MiB  # this host's view never grew
        assert rig.ext.metadata[VOL] > 256 * MiB   # the extension is in metadata
        assert views.refreshed == [] and rig.hv.resumes == []
        tg.cancel_scope.cancel()
