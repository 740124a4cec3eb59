"""The safety-net poll looks only at VMs with something to do, and at every VM every
``full_poll_interval_s`` (vdsm polls only drives whose threshold is not set)."""

from __future__ import annotations

import dataclasses

import anyio

from autoextend.lab.waiting import until
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.migration import MigState
from autoextend.monitor.policy import MiB
from autoextend.monitor.pollplan import FULL_POLL_DEFAULT_FACTOR, full_poll_every, needs_poll
from tests.monitor.rig import VOL, Rig


def test_full_poll_every() -> None:
    assert full_poll_every(2.0, None) == FULL_POLL_DEFAULT_FACTOR
    assert full_poll_every(2.0, 60.0) == 30
    assert full_poll_every(2.0, 1.0) == 1


async def test_an_armed_running_vm_waits_for_its_event_or_the_full_poll() -> None:
    rig = Rig(full_poll_interval_s=3.0)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB, events=False)  # event lost
        for _ in range(2):  # polls 1 and 2: the armed drive is not looked at
            await rig.advance(1.0)
        assert rig.volumes.sizes[VOL] == 256 * MiB and rig.ext.calls == 0
        rig.clock.advance(1.0)  # poll 3: the full one
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB, describe=rig.describe)
        tg.cancel_scope.cancel()


async def test_a_migrating_vm_and_a_job_target_are_looked_at_by_every_poll() -> None:
    """A destination refreshes at every look while a migration runs, and a block job paused
    for lack of space is seen (and resumed) by a look: neither may wait for the full poll."""
    rig = Rig(full_poll_interval_s=100.0)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        await rig.settle()
        vm = rig.monitor._vms["vm1"]
        assert not needs_poll(vm)  # armed and running: waits for its event
        for state in (MigState.INCOMING, MigState.MIGRATING_OUT):
            vm.machine.migration = state
            assert needs_poll(vm), state
        vm.machine.migration = MigState.NONE
        d = vm.drives["vda"]
        d.update_info(dataclasses.replace(d.info, job="commit", job_id="c1"))
        assert needs_poll(vm)
        tg.cancel_scope.cancel()
