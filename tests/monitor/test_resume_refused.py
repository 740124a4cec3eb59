"""A resume the backend refuses because a migration out runs (``MigrationRunning``: QMP's
``query-migrate`` right before ``cont``, issue 31 finding 3): the VM stays paused, nothing
of the resume is kept (backoff, expected RESUME), the task looks again at once, and the look
steps the VM to migrating-out, after which no resume is tried."""

from __future__ import annotations

from typing import Any, cast

from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.memory import MemoryHypervisor
from autoextend.monitor.protocols import DriveInfo, Hypervisor, MigrationRunning
from autoextend.monitor.resume import ResumeSteps
from autoextend.monitor.vmstate import VmState
from tests.monitor.rig import VOL, Rig
from tests.monitor.test_fast_resume import PausedVm

MiB = 1 << 20


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
