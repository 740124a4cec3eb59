"""The monitor's count of extensions in flight is derived from the VMs' drives (never kept by
hand), and its typed query of the volumes in use."""

from __future__ import annotations

import anyio

from autoextend.lab.waiting import until
from autoextend.monitor.core import Monitor, VolumeInUse
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.observer import ExtendsInFlight, Fanout, MonitorEvent
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import DrivesChanged, VmGone
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, VOL, Rig

NEW = VolumeRef("vg0", "new")


class Counts:
    """Every in-flight count the observers were told, in order."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def notify(self, event: MonitorEvent) -> None:
        if isinstance(event, ExtendsInFlight):
            self.seen.append(event.count)


def make_rig() -> tuple[Rig, Counts]:
    rig = Rig()
    counts = Counts()
    rig.monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock,
                          observer=Fanout(rig.tally, counts))
    return rig, counts


async def test_observers_hear_each_change_and_a_dropped_vm_stops_counting() -> None:
    rig, counts = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.ext.gate = anyio.Event()
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.ext.calls == 1, what="the held extension")
        assert rig.monitor.extends_in_flight == 1 and counts.seen == [1]
        rig.hv.emit(VmGone("vm1"))
        await until(lambda: rig.monitor.snapshot() == [], what="the VM dropped")
        assert rig.monitor.extends_in_flight == 0 and counts.seen == [1, 0]
        await rig.settle()
        assert counts.seen == [1, 0]  # the cancelled task does not count it again
        tg.cancel_scope.cancel()


async def test_a_drive_replaced_mid_extension_stops_counting_at_once() -> None:
    rig, counts = make_rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.ext.gate = anyio.Event()
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.ext.calls == 1, what="the old top's extension")
        rig.volumes.sizes[NEW] = 1024 * MiB  # a pivot: vda is another volume, with room
        rig.hv.vms["vm1"].drives["vda"].volume = NEW
        rig.hv.vms["vm1"].drives["vda"].allocation = 100 * MiB
        rig.hv.emit(DrivesChanged("vm1"))
        await until(lambda: rig.monitor.volumes_in_use()[0].volume == NEW, what="the new top")
        assert rig.monitor.extends_in_flight == 0 and counts.seen == [1, 0]
        rig.ext.gate.set()
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB, what="the old top's size")
        await rig.settle()
        assert rig.monitor.extends_in_flight == 0 and counts.seen == [1, 0]
        tg.cancel_scope.cancel()


async def test_volumes_in_use_is_a_typed_view_of_the_drives() -> None:
    rig = Rig()
    other = VolumeRef("vg1", "lv2")
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.add_vm("vm2", {"vdb": (other, 512 * MiB, 2048 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: len(rig.monitor.volumes_in_use()) == 2)
        got = sorted(rig.monitor.volumes_in_use(), key=lambda v: v.vm)
        assert got == [
            VolumeInUse("vm1", "vda", VOL, allocation=0, physical=256 * MiB,
                        capacity=1024 * MiB, cap=1128 * MiB),
            VolumeInUse("vm2", "vdb", other, allocation=0, physical=512 * MiB,
                        capacity=2048 * MiB, cap=2256 * MiB),
        ]
        snap = {(v["vm"], d["volume"]): (d["cap"], d["allocation"])
                for v in rig.monitor.snapshot() for d in v["drives"]}
        assert {(v.vm, str(v.volume)): (v.cap, v.allocation) for v in got} == snap
        # The capacity watcher's cheaper query: each volume once, with its cap.
        assert rig.monitor.caps_in_use() == {VOL: 1128 * MiB, other: 2256 * MiB}
        tg.cancel_scope.cancel()
