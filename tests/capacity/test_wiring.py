"""The capacity part's seams, against in-memory parts (fast): VG figures through the pool
backend's ``vg_figures``, the monitor's typed ``volumes_in_use`` for the committed bytes,
the VGs looked at and the reducer's in-use refusal, ``space_added`` on new space, the gate
it gives the monitor, and clean stops as observer events."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from autoextend.capacity.reduce import ReduceRefused
from autoextend.capacity.wiring import CapacityPart, committed_of
from autoextend.clock import ManualClock
from autoextend.config import Settings
from autoextend.lab.waiting import until
from autoextend.monitor.core import VolumeInUse
from autoextend.monitor.memory import MemoryVolumes
from autoextend.monitor.observer import CleanStop, DriveGone
from autoextend.volumes import LocalAuthority, VolumeRef

MiB = 1 << 20
VOL = VolumeRef("vg0", "lv1")
OTHER = VolumeRef("vg1", "lv2")


class Monitor:
    """The monitor as the capacity part sees it (``wiring.MonitorQueries``)."""

    def __init__(self) -> None:
        self.in_use: list[VolumeInUse] = []
        self.woken: list[str] = []

    def volumes_in_use(self) -> list[VolumeInUse]:
        return list(self.in_use)

    def caps_in_use(self) -> dict[VolumeRef, int]:
        return {use.volume: use.cap for use in self.in_use}

    def space_added(self, vg: str) -> int:
        self.woken.append(vg)
        return 1


def use(vm: str, volume: VolumeRef, cap: int, drive: str = "vda") -> VolumeInUse:
    return VolumeInUse(vm, drive, volume, allocation=0, physical=cap // 2, capacity=cap,
                       cap=cap)


def settings(**policy: object) -> Settings:
    return Settings.model_validate({
        "capacity": {"poll_interval_s": 1.0, "critical_free_mib": 64},
        "policy": {"extent_mib": 4, **policy}})


def committed(in_use: list[VolumeInUse]) -> dict[str, int]:
    """What the watcher's look is given: the caps the monitor reports, summed per VG."""
    monitor = Monitor()
    monitor.in_use = in_use
    return committed_of(monitor.caps_in_use())


def test_committed_counts_each_volume_once_per_vg() -> None:
    in_use = [use("a", VOL, 100 * MiB), use("a", VOL, 100 * MiB, "vdb"),
              use("b", VolumeRef("vg0", "lv9"), 50 * MiB), use("c", OTHER, 7 * MiB)]
    assert committed(in_use) == {"vg0": 150 * MiB, "vg1": 7 * MiB}
    assert committed([]) == {}


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["vg0", "vg1"]),
                          st.sampled_from(["lv1", "lv2", "lv3"]),
                          st.integers(0, 1 << 40)), max_size=12))
def test_committed_is_the_caps_of_the_distinct_volumes(
        rows: list[tuple[str, str, str, int]]) -> None:
    """A volume several drives use counts once (with its cap as last seen), in its own VG."""
    in_use = [use(vm, VolumeRef(vg, lv), cap) for vm, vg, lv, cap in rows]
    caps = {u.volume: u.cap for u in in_use}
    got = committed(in_use)
    assert set(got) == {v.vg for v in caps}
    assert sum(got.values()) == sum(caps.values())
    for vg, total in got.items():
        assert total == sum(c for v, c in caps.items() if v.vg == vg)


async def test_the_watcher_reads_the_backend_and_the_monitors_query() -> None:
    volumes = MemoryVolumes(extent_size=4 * MiB, authority=LocalAuthority())
    await volumes.create(VOL, 256 * MiB)
    await volumes.set_vg_capacity("vg0", 512 * MiB)
    await volumes.create(OTHER, 64 * MiB)
    await volumes.set_vg_capacity("vg1", 100 * MiB)  # 36 MiB free: critical
    await volumes.set_vg_capacity("vg2", 100 * MiB)  # no volume in use, not in [lvm] vgs
    monitor, clock, registry = Monitor(), ManualClock(), CollectorRegistry()
    monitor.in_use = [use("vm1", VOL, 1024 * MiB), use("vm2", OTHER, 128 * MiB)]
    levels: list[str] = []
    part = CapacityPart(settings(), volumes, clock, registry,
                        on_level=lambda: levels.append(part.summary()))
    w = part.watcher
    assert w is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(part.run, monitor)
        await until(lambda: w.looks == 1, what="the first look")
        assert registry.get_sample_value("autoextend_vg_committed_bytes",
                                         {"vg": "vg0"}) == 1024 * MiB
        assert registry.get_sample_value("autoextend_vg_free_bytes",
                                          {"vg": "vg0"}) == 256 * MiB
        assert registry.get_sample_value("autoextend_vg_level", {"vg": "vg1"}) == 2.0
        assert levels == ["VG vg1 CRITICAL 36% free"]
        # The monitor's gate: a critical VG holds back a running VM, not a paused one.
        assert part.gate(OTHER, paused_enospc=False) is not None
        assert part.gate(OTHER, paused_enospc=True) is None
        assert part.gate(VOL, paused_enospc=False) is None
        assert monitor.woken == []
        await volumes.set_vg_capacity("vg1", 1024 * MiB)  # vgextend
        clock.advance(1.0)
        await until(lambda: w.looks == 2, what="the next look")
        assert monitor.woken == ["vg1"] and part.gate(OTHER, paused_enospc=False) is None
        assert levels[-1] == ""
        # The VGs looked at: [lvm] vgs (none here) and those of the volumes in use.
        assert set(w.state) == {"vg0", "vg1"}
        tg.cancel_scope.cancel()


async def test_a_disabled_watcher_never_gates() -> None:
    volumes = MemoryVolumes(authority=LocalAuthority())
    s = Settings.model_validate({"capacity": {"enabled": False}})
    part = CapacityPart(s, volumes, ManualClock(), CollectorRegistry())
    assert part.watcher is None and part.gate(VOL, paused_enospc=False) is None
    assert part.status() == {"vgs": [], "reduces": 0, "reduced_bytes": 0}


async def test_reduce_refuses_a_volume_the_monitor_says_is_in_use() -> None:
    volumes = MemoryVolumes(authority=LocalAuthority())
    await volumes.create(VOL, 256 * MiB)
    monitor = Monitor()
    monitor.in_use = [use("vm7", VOL, 1024 * MiB, "vdc")]
    part = CapacityPart(settings(), volumes, ManualClock(), CollectorRegistry())
    with pytest.raises(ReduceRefused, match=r"VM vm7 uses it \(drive vdc\)"):
        await part.handle_reduce({"volume": "vg0/lv1", "dry_run": True}, monitor)
    with pytest.raises(ValueError, match="needs"):
        await part.handle_reduce({"volume": 3}, monitor)
    assert await volumes.size(VOL) == 256 * MiB


async def test_a_clean_stop_event_queues_a_reduce_checked_against_the_monitor() -> None:
    """The part is a monitor observer: a CleanStop (and only that) queues the VM's volumes;
    the reduce excludes the VM that stopped but not another VM that uses the volume."""
    volumes = MemoryVolumes(authority=LocalAuthority())
    await volumes.create(VOL, 256 * MiB)
    monitor = Monitor()
    monitor.in_use = [use("vm1", VOL, 1024 * MiB), use("vm2", VOL, 1024 * MiB, "vdb")]
    part = CapacityPart(settings(reduce_on_stop=True), volumes, ManualClock(),
                        CollectorRegistry())
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(part.run, monitor)
            part.notify(DriveGone("vm1", "vda", VOL))  # not a stop: ignored
            part.notify(CleanStop("vm1", (VOL,)))
            await until(lambda: any(e["event"] == "reduce on stop refused" for e in logs),
                        what="the reduce on stop")
            tg.cancel_scope.cancel()
    [refused] = [e for e in logs if e["event"] == "reduce on stop refused"]
    assert refused["vm"] == "vm1" and "VM vm2 uses it (drive vdb)" in refused["reason"]
    assert part.reducer.reduces == 0 and await volumes.size(VOL) == 256 * MiB
