"""``autoextend status``: the metadata area line under a VG's line (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import VgFigures
from autoextend.capacity.render import render_capacity
from autoextend.capacity.watch import CapacityWatcher
from autoextend.clock import ManualClock

MiB = 1 << 20


class NoSource:
    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        return []


def test_status_shows_the_metadata_area_only_where_there_is_one() -> None:
    w = CapacityWatcher(CapacitySettings(), NoSource(), ManualClock())
    w.update([VgFigures("gold", 1024 * MiB, 512 * MiB, 128 * MiB, 6 * MiB, 500, 40),
              VgFigures("loop", 1024 * MiB, 512 * MiB)], 0.0, {})
    lines = render_capacity({"vgs": w.snapshot()})
    assert len(lines) == 3 and lines[0].startswith("VG gold") and lines[2].startswith("VG loop")
    assert lines[1] == ("  CRITICAL: metadata area 6.0MiB free of 128.0MiB (4.7%), about "
                        f"{6 * MiB // 128} extends left (128.0 B each), at most 40 segments "
                        "per LV")
