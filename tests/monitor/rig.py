"""The monitor test rig: a Monitor over the in-memory hypervisor, volumes and extender."""

from __future__ import annotations

from autoextend.clock import ManualClock
from autoextend.lab.waiting import until
from autoextend.monitor.caps import FullAllocation
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.core import Monitor
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.memory import MemoryExtender, MemoryHypervisor, MemoryVolumes
from autoextend.monitor.migration import MigrationInfo, Phase, Role
from autoextend.monitor.observer import Fanout, MonitorObserver, Tally
from autoextend.monitor.protocols import PauseReason
from autoextend.monitor.vm import SpaceGate
from autoextend.volumes import VolumeRef

VOL = VolumeRef("vg0", "lv1")
SETTINGS = PolicySettings(
    chunk_mib=128, utilization_percent=50, cap_factor=1.1, extent_mib=4, poll_interval_s=1.0,
    extend_timeout_s=5.0, retry_initial_s=0.5, retry_max_s=2.0,
    full_poll_interval_s=1.0,  # every poll looks at every VM (pollplan tests use others)
)
# watermark = 64 MiB; threshold = physical - 64 MiB; next = physical + 128 MiB


class Rig:
    def __init__(self, *, space_gate: SpaceGate | None = None,
                 observer: MonitorObserver | None = None,
                 measure_full: FullAllocation | None = None, **settings: object) -> None:
        """``settings``: PolicySettings fields; ``space_gate``, ``observer`` (besides the
        rig's tally) and ``measure_full`` go to the monitor's constructor."""
        self.volumes = MemoryVolumes()
        self.hv = MemoryHypervisor(self.volumes)
        self.ext = MemoryExtender(self.volumes)
        self.clock = ManualClock()
        self.tally = Tally()
        cfg = SETTINGS.model_copy(update=settings)
        self.monitor = Monitor(self.hv, self.ext, cfg, self.clock,
                               observer=self.tally if observer is None
                               else Fanout(self.tally, observer),
                               dry_run=bool(settings.get("dry_run", False)),
                               space_gate=space_gate, measure_full=measure_full)

    def state(self, vm: str = "vm1", drive: str = "vda") -> ThresholdState | None:
        for v in self.monitor.snapshot():
            if v["vm"] == vm:
                for d in v["drives"]:
                    if d["drive"] == drive:
                        return ThresholdState(d["state"])
        return None

    def describe(self) -> object:
        """The last observed state, for :func:`autoextend.lab.waiting.until` messages."""
        return {"vms": self.monitor.snapshot(), "sizes": dict(self.volumes.sizes),
                "thresholds": list(self.hv.thresholds), "extender_calls": self.ext.calls}

    async def settle(self, *, extensions: bool = True) -> None:
        """Wait until the monitor is idle at the manual clock's time (every event and message
        handled, nothing due): the synchronisation point before asserting that nothing
        happened. ``extensions=False``: an extension may stay in flight (held by a gate)."""
        await until(lambda: self.monitor.idle(extensions=extensions), 10.0,
                    "the monitor to be idle", describe=self.describe)

    async def advance(self, seconds: float, *, extensions: bool = True) -> None:
        """Move the manual clock, then :meth:`settle`."""
        self.clock.advance(seconds)
        await self.settle(extensions=extensions)


class Views:
    """The monitor's volume views for migration tests: a refresh makes this host's view
    catch up with the size the extender put in metadata (``MemoryExtender.metadata``)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.refreshed: list[VolumeRef] = []

    async def refresh(self, volume: VolumeRef) -> int:
        """This host's view catches up with the size in metadata."""
        self.refreshed.append(volume)
        sizes = self.rig.volumes.sizes
        sizes[volume] = max(sizes[volume], self.rig.ext.metadata.get(volume, 0))
        return sizes[volume]


def views_rig() -> tuple[Rig, Views]:
    """A rig whose monitor refreshes views through :class:`Views` (migration tests)."""
    rig = Rig()
    views = Views(rig)
    rig.monitor = Monitor(rig.hv, rig.ext, SETTINGS, rig.clock, observer=rig.tally,
                          views=views)
    return rig, views


def arrive_paused(rig: Rig, info: MigrationInfo | None = None,
                  view: int = 256 * (1 << 20)) -> None:
    """vm1 migrating in (``info``: pending by default), paused by its migration, its vda on
    VOL with a ``view``-byte view here (4 GiB virtual)."""
    rig.hv.migrations["vm1"] = info or MigrationInfo(Role.DESTINATION, Phase.PENDING)
    rig.hv.add_vm("vm1", {"vda": (VOL, view, 4096 * (1 << 20))})
    rig.hv.vms["vm1"].running, rig.hv.vms["vm1"].reason = False, PauseReason.MIGRATION
