"""Issue 30 item 5 in the monitor (in-memory hypervisor): after an extension the VM's task
re-arms and resumes from what it knows (no drive or run-state read), and an extension that
deferred its refresh (a migration out) never lets the VM be resumed here, whether or not the
VM's task has stepped its migration state yet."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from autoextend.lab.waiting import until
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.memory import MemoryHypervisor
from autoextend.monitor.protocols import DriveInfo, Hypervisor, MigrationRunning, PauseReason
from autoextend.monitor.resume import ResumeSteps
from autoextend.monitor.vmstate import VmEvent, VmMachine, VmState
from tests.monitor.rig import VOL, Rig

MiB = 1 << 20


class Counting:
    """The rig's hypervisor, recording the calls named in ``counted`` (a composition: the
    monitor's context takes it in the hypervisor's place)."""

    def __init__(self, inner: MemoryHypervisor, counted: tuple[str, ...]) -> None:
        self.inner = inner
        self.counted = counted
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.counted:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attr(*args, **kwargs)

        return call


def count_calls(rig: Rig, names: tuple[str, ...]) -> list[str]:
    """From now on, record each call the monitor makes of the hypervisor's ``names``."""
    counting = Counting(rig.hv, names)
    rig.monitor.ctx.hypervisor = cast(Hypervisor, counting)
    return counting.calls


@pytest.mark.parametrize("fast", [True, False])
async def test_after_the_extenders_ok_no_look_before_the_resume(fast: bool) -> None:
    rig = Rig()
    rig.monitor.ctx.fast_resume = fast
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    gate = rig.ext.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 300 * MiB)  # past the end: ENOSPC + pause
        await until(lambda: rig.tally.enospc_pauses == 1 and rig.ext.calls == 1)
        await rig.settle(extensions=False)
        calls = count_calls(rig, ("drives", "run_state", "migration", "set_threshold",
                                  "resume"))
        gate.set()
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        upto = calls[:calls.index("resume") + 1]
        if fast:
            assert upto == ["set_threshold", "resume"]
        else:  # the old path looks again (the negative control)
            assert "drives" in upto and "run_state" in upto
        tg.cancel_scope.cancel()


class PausedVm:
    """One VM paused for ENOSPC as its task knows it (the VmView protocol)."""

    def __init__(self, drives: dict[str, DriveState]) -> None:
        self.name = "vm1"
        self.machine = VmMachine(views_checked=True, migration_stale=False)
        self.machine.managed_drive_full("vda")
        self.machine.apply(VmEvent.ENOSPC, 0.0, reason=PauseReason.ENOSPC)
        self.drives = drives
        self.posted: list[object] = []

    def post(self, message: object) -> None:
        self.posted.append(message)

    def wake_at(self, when: float) -> None:
        pass

    def start_extension(self, d: DriveState, info: object = None) -> None:
        pass


@pytest.mark.parametrize("deferred", [True, False])
async def test_a_deferred_extension_never_resumes_before_the_machine_steps(
        deferred: bool) -> None:
    """An extension found the VM migrating out and deferred its refresh, but the VM's task
    has not stepped its machine yet (its look waits on the hypervisor, as libvirt's job
    lock makes it): the ENOSPC pause stays. Without the deferred size it is resumed."""
    rig = Rig()
    info = DriveInfo("vm1", "vda", "node-vda", "/dev/vg0/lv1", 1024 * MiB, 300 * MiB,
                     256 * MiB)
    d = DriveState(info, VOL, 1100 * MiB, ThresholdState.SET, threshold=192 * MiB)
    vm = PausedVm({"vda": d})
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    if deferred:
        vm.machine.deferred_sizes["vda"] = 384 * MiB
    assert vm.machine.state is VmState.PAUSED_ENOSPC
    await ResumeSteps(rig.monitor.ctx).after_check(vm)
    assert rig.hv.resumes == ([] if deferred else ["vm1"])
    if deferred:
        assert vm.machine.last_action == "left paused: migrating-out (resumed where it runs next)"


# A resume the backend refuses because a migration out runs (``MigrationRunning``: QMP's
# ``query-migrate`` right before ``cont``, issue 31 finding 3): the VM stays paused, nothing
# of the resume is kept (backoff, expected RESUME), and the task looks again at once.


class Refusing:
    """The rig's hypervisor, refusing every resume as QMP does during a migration out."""

    def __init__(self, inner: MemoryHypervisor) -> None:
        self.inner = inner
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def resume(self, vm: str) -> None:
        self.refused += 1
        raise MigrationRunning(vm, "active")


class Waking(PausedVm):
    def __init__(self, drives: dict[str, DriveState]) -> None:
        super().__init__(drives)
        self.wakes: list[float] = []

    def wake_at(self, when: float) -> None:
        self.wakes.append(when)


async def test_a_refused_resume_leaves_the_vm_paused_and_looks_again() -> None:
    rig = Rig()
    refusing = Refusing(rig.hv)
    rig.monitor.ctx.hypervisor = cast(Hypervisor, refusing)
    info = DriveInfo("vm1", "vda", "node-vda", "/dev/vg0/lv1", 1024 * MiB, 300 * MiB,
                     512 * MiB)
    d = DriveState(info, VOL, 1100 * MiB, ThresholdState.SET, threshold=448 * MiB)
    vm = Waking({"vda": d})
    rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 1024 * MiB)})
    before = (vm.machine.resume_attempts, vm.machine.last_resume_at)
    await ResumeSteps(rig.monitor.ctx).after_check(vm)
    m = vm.machine
    assert refusing.refused == 1 and rig.hv.resumes == []
    assert m.state is VmState.PAUSED_ENOSPC and not m.expect_resume
    assert (m.resume_attempts, m.last_resume_at) == before  # no backoff owed: nothing sent
    assert m.migration_stale  # the next look asks the hypervisor
    assert m.last_action == "left paused: migrating-out (resumed where it runs next)"
    assert vm.wakes == [rig.monitor.ctx.clock.now()]
