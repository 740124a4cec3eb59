"""The capacity watcher: looks at the VGs every ``poll_interval_s`` and acts on changes.

Per VG it keeps the last figures, the moving average of consumed bytes per second and the
level (``figures.py``). It

* logs a level crossing once (``volume group space level changed``, warning or error) and
  calls ``on_level()`` (the service's STATUS= line);
* tells which VGs gained free space (``vgextend``, a raised loop VG capacity, a reduce):
  the capacity part wakes their drives, so extensions that failed for a full VG retry at
  once instead of at their next backoff step;
* answers the monitor's gate: at the critical level only drives whose VM paused on ENOSPC
  are extended (the last space goes to the VMs that are stopped).

It knows nothing of the monitor: each look is given the VGs to look at and their committed
bytes (``wiring.py`` takes both from the monitor's typed query). A failed look is logged
once (and again when it works) and never stops the watcher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import (
    Level,
    VgFigures,
    headroom_seconds,
    level_of,
    overcommit_ratio,
    update_rate,
)
from autoextend.clock import Clock
from autoextend.logs import get_logger
from autoextend.volumes import ReportsVgFigures, VolumeRef

log = get_logger("capacity")


@dataclass
class VgState:
    figures: VgFigures
    seen_at: float
    rate: float = 0.0
    level: Level = Level.OK
    committed: int = 0

    @property
    def headroom_s(self) -> float:
        return headroom_seconds(self.figures.free, self.rate)

    def snapshot(self) -> dict[str, Any]:
        f = self.figures
        head = self.headroom_s
        return {
            "vg": f.vg,
            "size": f.size,
            "free": f.free,
            "committed": self.committed,
            "overcommit_ratio": round(overcommit_ratio(self.committed, f.size), 4),
            "rate_bytes_per_s": round(self.rate, 3),
            "headroom_s": None if math.isinf(head) else round(head, 1),
            "level": self.level.value,
        }


class CapacityWatcher:
    def __init__(
        self,
        settings: CapacitySettings,
        source: ReportsVgFigures,
        clock: Clock,
        *,
        on_level: Callable[[], object] = lambda: None,
    ) -> None:
        """``source``: the pool backend, or the SPM's published record (mailbox mode);
        ``on_level``: called after every level change."""
        self.settings = settings
        self.source = source
        self.clock = clock
        self._on_level = on_level
        self.state: dict[str, VgState] = {}
        self.looks = 0
        self.failures = 0
        self._failing = False
        self.looked = anyio.Event()  # set after each look (tests wait on it)
        # Every level change: (time, vg, new level, free, size, free at the look before).
        self.changes: list[tuple[float, str, Level, int, int, int | None]] = []

    async def look(self, vgs: Iterable[str], committed: Mapping[str, int]) -> list[str]:
        """One look at ``vgs``, with the bytes committed in each (the caps of its volumes in
        use); the VGs that gained free space since the last look. Never raises (but
        cancellation): a failed look gains nothing."""
        names = sorted(set(vgs))
        try:
            found = await self.source.vg_figures(names)
        except Exception as exc:  # noqa: BLE001 - a failed look must not stop the watcher
            self.failures += 1
            if not self._failing:
                log.warning("volume group figures unavailable", error=str(exc) or repr(exc))
            self._failing = True
            return []
        if self._failing:
            log.info("volume group figures available again")
            self._failing = False
        return self.update(found, self.clock.now(), committed)

    def update(self, found: Iterable[VgFigures], now: float,
               committed: Mapping[str, int]) -> list[str]:
        """Take fresh figures (from the backend, or the SPM's published record); the VGs
        that gained free space."""
        gained: list[str] = []
        for f in found:
            st = self.state.get(f.vg)
            if st is None:
                st = self.state[f.vg] = VgState(f, now)
                self._set_level(st, None, now)
            else:
                before = st.figures
                st.rate = update_rate(st.rate, before.free, f.free, now - st.seen_at,
                                      self.settings.rate_window_s)
                st.figures, st.seen_at = f, now
                self._set_level(st, before.free, now)
                if f.free > before.free:
                    log.info("volume group gained space", vg=f.vg, free=f.free,
                             gained=f.free - before.free)
                    gained.append(f.vg)
            st.committed = committed.get(f.vg, 0)
        self.looks += 1
        self.looked.set()
        self.looked = anyio.Event()
        return gained

    def _set_level(self, st: VgState, free_before: int | None, now: float) -> None:
        f = st.figures
        level = level_of(f.size, f.free, self.settings.levels_for(f.vg))
        if level is st.level:
            return
        report = {Level.OK: log.info, Level.WARNING: log.warning,
                  Level.CRITICAL: log.error}[level]
        pct = round(100.0 * f.free / f.size, 1) if f.size else 0.0
        report("volume group space level changed", vg=f.vg, level=level.value,
               was=st.level.value, free=f.free, size=f.size, free_percent=pct)
        st.level = level
        self.changes.append((now, f.vg, level, f.free, f.size, free_before))
        self._on_level()

    def gate(self, volume: VolumeRef, paused_enospc: bool) -> str | None:
        """The monitor's space gate: hold back extensions of a critical VG's running VMs."""
        st = self.state.get(volume.vg)
        if st is None or st.level is not Level.CRITICAL or paused_enospc:
            return None
        return (f"VG {volume.vg} is at its critical level ({st.figures.free} bytes free): "
                "only VMs paused on ENOSPC are extended")

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.state[vg].snapshot() for vg in sorted(self.state)]

    def summary(self) -> str:
        """For systemd's STATUS=: the VGs not at level ok ("" when all are)."""
        parts = []
        for vg in sorted(self.state):
            st = self.state[vg]
            if st.level is not Level.OK:
                f = st.figures
                pct = 100.0 * f.free / f.size if f.size else 0.0
                parts.append(f"VG {vg} {st.level.value.upper()} {pct:.0f}% free")
        return ", ".join(parts)
