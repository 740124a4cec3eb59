"""The capacity watcher and the monitor's seams for it (the gate and the clean-stop event,
both given at construction), against in-memory parts (fast)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import Level, VgFigures
from autoextend.capacity.watch import CapacityWatcher
from autoextend.clock import ManualClock
from autoextend.lab.waiting import until
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.observer import CleanStop, MonitorEvent
from autoextend.monitor.protocols import OutcomeKind
from autoextend.volumes import VolumeRef
from tests.monitor.rig import VOL, Rig

MiB = 1 << 20


class Vgs:
    """A scripted VgSource (unit tests only)."""

    def __init__(self) -> None:
        self.figs: dict[str, VgFigures] = {}
        self.fail = False

    def set(self, vg: str, size: int, free: int) -> None:
        self.figs[vg] = VgFigures(vg, size, free)

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        if self.fail:
            raise OSError("injected")
        return [self.figs[v] for v in vgs if v in self.figs]


class Watched:
    """A watcher over ``src`` looking at vg0 with 1 GiB committed; ``woken``: the VGs each
    look said gained space, ``levels``: how often ``on_level`` was called."""

    def __init__(self, src: Vgs, clock: ManualClock, **kw: object) -> None:
        settings = CapacitySettings.model_validate(
            {"warn_free_percent": 20.0, "critical_free_mib": 64, "rate_window_s": 10.0, **kw})
        self.woken: list[str] = []
        self.levels = 0
        self.w = CapacityWatcher(settings, src, clock, on_level=self._level)

    def _level(self) -> None:
        self.levels += 1

    async def look(self) -> None:
        self.woken.extend(await self.w.look(["vg0"], {"vg0": 1024 * MiB}))


def watcher(src: Vgs, clock: ManualClock, **kw: object) -> tuple[CapacityWatcher, Watched]:
    watched = Watched(src, clock, **kw)
    return watched.w, watched


async def test_levels_log_once_and_rate_and_wake() -> None:
    src, clock = Vgs(), ManualClock()
    w, watched = watcher(src, clock)
    woken = watched.woken
    src.set("vg0", 512 * MiB, 200 * MiB)
    with capture_logs() as logs:
        await watched.look()
        clock.advance(1.0)
        src.set("vg0", 512 * MiB, 100 * MiB)  # 80.5 % used: warning
        await watched.look()
        clock.advance(1.0)
        src.set("vg0", 512 * MiB, 90 * MiB)
        await watched.look()  # still warning: no second log
        clock.advance(1.0)
        src.set("vg0", 512 * MiB, 32 * MiB)
        await watched.look()  # critical
    changes = [e for e in logs if e["event"] == "volume group space level changed"]
    assert [e["level"] for e in changes] == ["warning", "critical"]
    assert changes[1]["log_level"] == "error"
    assert watched.levels == 2  # on_level: once per change
    st = w.state["vg0"]
    assert st.level is Level.CRITICAL and st.rate > 0 and st.committed == 1024 * MiB
    assert "VG vg0 CRITICAL 6% free" == w.summary()
    snap = w.snapshot()[0]
    assert snap["overcommit_ratio"] == 2.0 and snap["headroom_s"] is not None
    assert woken == []
    # Critical: only VMs paused on ENOSPC are extended.
    assert w.gate(VolumeRef("vg0", "lv"), paused_enospc=False) is not None
    assert w.gate(VolumeRef("vg0", "lv"), paused_enospc=True) is None
    assert w.gate(VolumeRef("other", "lv"), paused_enospc=False) is None
    clock.advance(1.0)
    src.set("vg0", 1024 * MiB, 544 * MiB)  # vgextend
    await watched.look()
    assert woken == ["vg0"] and w.state["vg0"].level is Level.OK and w.summary() == ""
    assert watched.levels == 3


async def test_failed_look_is_logged_once_and_kept_going() -> None:
    src, clock = Vgs(), ManualClock()
    w, watched = watcher(src, clock)
    src.fail = True
    with capture_logs() as logs:
        await watched.look()
        await watched.look()
        src.fail = False
        src.set("vg0", 512 * MiB, 400 * MiB)
        await watched.look()
    events = [e["event"] for e in logs]
    assert events.count("volume group figures unavailable") == 1
    assert "volume group figures available again" in events
    assert w.failures == 2 and w.state["vg0"].figures.free == 400 * MiB


def test_per_vg_levels_and_validation() -> None:
    s = CapacitySettings.model_validate(
        {"warn_free_percent": 10.0, "vgs": {"gold": {"critical_free_mib": 7}}})
    assert s.levels_for("gold").critical_free == 7 * MiB
    assert s.levels_for("gold").warn_free_percent == 10.0
    assert s.levels_for("x").critical_free == 0
    with pytest.raises(ValueError):
        CapacitySettings.model_validate({"warn_free_percent": 100.0})
    with pytest.raises(ValueError):
        CapacitySettings.model_validate({"vgs": {"gold": {}}})


@pytest.fixture
def rig() -> Rig:
    return Rig(retry_initial_s=30.0, retry_max_s=60.0)


async def test_space_added_retries_a_failed_extension_at_once(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.ext.fail_with = OutcomeKind.FAILED
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: rig.ext.calls == 1 and rig.state() is ThresholdState.EXCEEDED)
        rig.ext.fail_with = None
        assert rig.monitor.space_added("other-vg") == 0
        assert rig.monitor.space_added(VOL.vg) == 1  # no clock advance: the backoff is 30 s
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB, what="the retry")
        assert rig.monitor.space_added(VOL.vg) == 0  # nothing waits any more
        tg.cancel_scope.cancel()


async def test_critical_gate_extends_only_paused_vms() -> None:
    held: list[tuple[VolumeRef, bool]] = []

    def gate(volume: VolumeRef, paused: bool) -> str | None:
        held.append((volume, paused))
        return None if paused else "critical"

    rig = Rig(retry_initial_s=30.0, retry_max_s=60.0, space_gate=gate)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 200 * MiB)
        await until(lambda: held and rig.state() is ThresholdState.EXCEEDED)
        assert rig.ext.calls == 0 and rig.volumes.sizes[VOL] == 256 * MiB
        rig.hv.write("vm1", "vda", 100 * MiB)  # past the end: ENOSPC pause
        await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB, what="the paused VM's extension")
        assert held[-1] == (VOL, True)
        tg.cancel_scope.cancel()


class Stops:
    """An observer that keeps the clean stops."""

    def __init__(self) -> None:
        self.seen: list[CleanStop] = []

    def notify(self, event: MonitorEvent) -> None:
        if isinstance(event, CleanStop):
            self.seen.append(event)


async def test_clean_stop_reports_the_volumes_and_a_crash_does_not() -> None:
    from autoextend.monitor.protocols import VmGone

    stops = Stops()
    rig = Rig(retry_initial_s=30.0, retry_max_s=60.0, observer=stops)
    other = VolumeRef("vg0", "lv2")
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    rig.hv.add_vm("vm2", {"vda": (other, 256 * MiB, 1024 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state("vm1") is ThresholdState.SET
                    and rig.state("vm2") is ThresholdState.SET)
        rig.hv.emit(VmGone("vm2"))  # crashed, killed, migrated or connection lost
        rig.hv.emit(VmGone("vm1", clean=True))
        await until(lambda: not rig.monitor.snapshot(), what="both VMs dropped")
        assert stops.seen == [CleanStop("vm1", (VOL,))]
        tg.cancel_scope.cancel()


def test_libvirt_stopped_shutdown_is_the_only_clean_stop() -> None:
    import libvirt

    from autoextend.libvirt_backend.events import lifecycle_outcome
    from autoextend.monitor.protocols import VmGone

    stopped = libvirt.VIR_DOMAIN_EVENT_STOPPED
    assert lifecycle_outcome("v", stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
                             enospc_seen=False) == VmGone("v", clean=True)
    for detail in (libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
                   libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                   libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
                   libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED):
        assert lifecycle_outcome("v", stopped, detail, enospc_seen=False) == VmGone("v")
