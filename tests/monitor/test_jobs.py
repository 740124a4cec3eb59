"""Block-job targets in the monitor (in-memory hypervisor): extended like drives with the
larger chunk, a job paused for space resumed once its target has room, a commit base grown
to its measured need, failures counted, and nothing carried across a pivot."""

from __future__ import annotations

import anyio
import pytest

from autoextend.lab.waiting import until
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import DrivesChanged, JobEnded
from autoextend.volumes import VolumeRef
from tests.monitor.rig import VOL, Rig

BASE = VolumeRef("vg0", "base")
NEW = VolumeRef("vg0", "new")


@pytest.fixture
def rig() -> Rig:
    return Rig()  # chunk 128 MiB, utilization 50 %: a job target's chunk is 256 MiB


async def test_paused_job_is_extended_then_resumed(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        rig.ext.gate = anyio.Event()
        rig.hv.add_job_target("vm1", "vda#c1", BASE, 256 * MiB, 4096 * MiB, job="commit",
                              job_id="c1")
        await until(lambda: rig.state(drive="vda#c1") is not None, 5, "the target seen")
        rig.hv.write("vm1", "vda#c1", 300 * MiB)  # past the end: the job pauses
        await until(lambda: rig.ext.calls >= 1, 5, "an extension of the target")
        assert rig.hv.job_resumes == []
        rig.ext.gate.set()
        await until(lambda: rig.hv.job_resumes == [("vm1", "c1")], 5, "job-resume",
                    describe=rig.describe)
        # one job chunk (256 MiB, not 128), then enough for the watermark (128 MiB free)
        assert rig.volumes.sizes[BASE] == 512 * MiB
        assert rig.tally.job_resumes == 1
        assert rig.hv.resumes == [] and rig.hv.vms["vm1"].running
        tg.cancel_scope.cancel()


async def test_commit_base_is_grown_to_its_measured_need(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        rig.hv.add_job_target("vm1", "vda#c1", BASE, 256 * MiB, 4096 * MiB, job="commit",
                              job_id="c1", need=1000 * MiB)
        # need + watermark (128 MiB), extent-aligned, in one extension, before any write
        await until(lambda: rig.volumes.sizes[BASE] == 1128 * MiB, 5, "the pre-extension",
                    describe=rig.describe)
        await until(lambda: rig.state(drive="vda#c1") is ThresholdState.SET, 5, "re-armed")
        assert rig.ext.calls == 1
        tg.cancel_scope.cancel()


async def test_pre_extension_can_be_switched_off() -> None:
    rig = Rig(job_pre_extend=False)
    rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        rig.hv.add_job_target("vm1", "vda#c1", BASE, 256 * MiB, 4096 * MiB, job="commit",
                              job_id="c1", need=1000 * MiB)
        await until(lambda: rig.state(drive="vda#c1") is ThresholdState.SET, 5, "armed")
        assert rig.ext.calls == 0 and rig.volumes.sizes[BASE] == 256 * MiB
        tg.cancel_scope.cancel()


async def test_job_failed_for_space_is_counted(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 512 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.emit(JobEnded("vm1", "c1", "commit", "No space left on device", True))
        rig.hv.emit(JobEnded("vm1", "m1", "mirror"))
        await until(lambda: rig.tally.job_failures == 1, 5, "the failure counted")
        tg.cancel_scope.cancel()


async def test_extension_in_flight_does_not_follow_the_drive_to_a_new_top(rig: Rig) -> None:
    """A pivot while the old top's extension is in flight: the old volume gets what was
    asked for it and no more; the new top (nearly full) is extended on its own numbers."""
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.ext.gate = anyio.Event()
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.ext.calls == 1, 5, "the old top's extension")
        # the pivot: vda is now another volume, itself inside its watermark
        rig.volumes.sizes[NEW] = 1024 * MiB
        rig.hv.vms["vm1"].drives["vda"].volume = NEW
        rig.hv.vms["vm1"].drives["vda"].allocation = 1000 * MiB
        rig.hv.emit(DrivesChanged("vm1"))
        await until(lambda: rig.monitor.snapshot()[0]["drives"][0]["volume"] == str(NEW), 5,
                    "the new top monitored")
        rig.ext.gate.set()
        await until(lambda: rig.volumes.sizes[NEW] == 1152 * MiB, 5, "the new top extended",
                    describe=rig.describe)
        for _ in range(3):
            rig.clock.advance(1.0)
            await anyio.sleep(0.02)
        assert rig.volumes.sizes[VOL] == 384 * MiB  # one chunk, on the old top's numbers
        assert rig.volumes.sizes[NEW] == 1152 * MiB
        tg.cancel_scope.cancel()
