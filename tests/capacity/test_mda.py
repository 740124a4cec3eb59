"""The metadata area headroom (issue 27 item 5), fast: the level and the measure of bytes
per extend (pure, hypothesis), the watcher's gate and logs, and the config rules."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from structlog.testing import capture_logs

from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import (
    SEGMENT_BYTES_ESTIMATE,
    SEGMENT_MIN_BYTES,
    SEGMENT_SAMPLE,
    Level,
    MdaLevels,
    MdaMeasure,
    VgFigures,
    extends_left,
    mda_level_of,
    update_mda_measure,
)
from autoextend.capacity.watch import CapacityWatcher
from autoextend.clock import ManualClock
from autoextend.volumes import VolumeRef

MiB = 1 << 20
percents = st.floats(0.0, 99.9, allow_nan=False)


@given(st.integers(1, 1 << 40), st.data(), percents, percents)
def test_mda_level_follows_the_percent_free(size: int, data: st.DataObject, warn: float,
                                            crit: float) -> None:
    free = data.draw(st.integers(0, size))
    level = mda_level_of(size, free, MdaLevels(warn, crit))
    pct = 100.0 * free / size
    if crit > 0 and free * 100 < crit * size:
        assert level is Level.CRITICAL and pct < crit
    elif warn > 0 and free * 100 < warn * size:
        assert level is Level.WARNING and pct < warn
    else:
        assert level is Level.OK
    # Less free never gives a better level.
    order = [Level.OK, Level.WARNING, Level.CRITICAL]
    lower = mda_level_of(size, free // 2, MdaLevels(warn, crit))
    assert order.index(lower) >= order.index(level)


def test_unknown_or_off_is_ok() -> None:
    assert mda_level_of(None, None, MdaLevels(20, 5)) is Level.OK
    assert mda_level_of(0, 0, MdaLevels(20, 5)) is Level.OK
    assert mda_level_of(1 * MiB, 0, MdaLevels(0, 0)) is Level.OK
    assert mda_level_of(1 * MiB, 0, MdaLevels(20, 0)) is Level.WARNING
    assert mda_level_of(1 * MiB, 0, MdaLevels(20, 5)) is Level.CRITICAL


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 64)), min_size=1, max_size=40),
       st.integers(50, 300), st.integers(1 << 16, 1 << 24))
def test_the_measure_is_the_mean_drop_per_segment(steps: list[tuple[int, int]], cost: int,
                                                  start: int) -> None:
    """lvm2 reports vg_mda_free in 512-byte steps: with a true cost per segment, every
    sample (at least SEGMENT_SAMPLE segments) is within 512 / SEGMENT_SAMPLE bytes of it,
    and so is the average; a look with fewer segments (an lvremove) restarts the measure,
    never samples a negative cost."""
    m = MdaMeasure()
    segments = 0
    for removed, added in steps:
        segments = max(0, segments - removed) + added
        if segments * cost > start:
            break  # lvm2 refuses the change that would overfill the area
        free = (start - segments * cost) // 512 * 512
        m = update_mda_measure(m, free, segments)
        assert m.bytes_per_extend > 0
    if m.measured:
        assert abs(m.bytes_per_extend - cost) <= 512 / SEGMENT_SAMPLE
    else:
        assert m.bytes_per_extend == SEGMENT_BYTES_ESTIMATE


def test_the_measure_restarts_after_a_remove_and_ignores_unknown() -> None:
    m = update_mda_measure(MdaMeasure(), 100_000, 10)
    assert (m.ref_free, m.ref_segments, m.measured) == (100_000, 10, False)
    m = update_mda_measure(m, 99_000, 10 + SEGMENT_SAMPLE - 1)  # too few segments yet
    assert m.ref_segments == 10
    m = update_mda_measure(m, 100_000 - 110 * 20, 30)
    assert m.measured and m.bytes_per_extend == 110
    m2 = update_mda_measure(m, 100_000, 25)  # an lvremove: restart there, keep the average
    assert (m2.ref_free, m2.ref_segments, m2.bytes_per_extend) == (100_000, 25, 110)
    assert update_mda_measure(m2, None, None) == m2


@given(st.integers(-5, 1 << 40), st.floats(0.0, 1e6, allow_nan=False))
def test_extends_left(free: int, per: float) -> None:
    left = extends_left(free, per)
    assert left >= 0
    per = max(per, SEGMENT_MIN_BYTES)  # no measure says a segment costs less
    if free > 0:
        assert left * per <= free < (left + 1) * per


class Source:
    def __init__(self) -> None:
        self.figs: dict[str, VgFigures] = {}

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        return [self.figs[v] for v in vgs if v in self.figs]


def fig(mda_free: int, segments: int = 10) -> VgFigures:
    return VgFigures("vg0", 1024 * MiB, 512 * MiB, 128 * MiB, mda_free, segments, 3)


async def test_the_gate_holds_back_at_the_metadata_critical_level() -> None:
    src = Source()
    levels: list[int] = []
    w = CapacityWatcher(CapacitySettings(), src, ManualClock(),
                        on_level=lambda: levels.append(1))
    vol = VolumeRef("vg0", "lv")

    def level() -> Level:
        return w.state["vg0"].mda_level

    with capture_logs() as logs:
        src.figs["vg0"] = fig(60 * MiB)
        assert await w.look(["vg0"], {}) == []
        assert level() is Level.OK and w.gate(vol, False) is None
        src.figs["vg0"] = fig(20 * MiB)  # 15.6 % free: warning, nothing held back
        await w.look(["vg0"], {})
        assert level() is Level.WARNING and w.gate(vol, False) is None
        src.figs["vg0"] = fig(6 * MiB)  # 4.7 % free: critical
        await w.look(["vg0"], {})
        held = w.gate(vol, paused_enospc=False)
        assert held is not None and "metadata area" in held
        assert w.gate(vol, paused_enospc=True) is None  # paused VMs still get space
        assert "metadata area CRITICAL 5% free" in w.summary()
        src.figs["vg0"] = fig(30 * MiB, segments=5)  # LVs removed
        assert await w.look(["vg0"], {}) == ["vg0"]  # the held-back drives go on
        assert w.gate(vol, False) is None
    changes = [e for e in logs if e["event"] == "volume group metadata area level changed"]
    assert [e["level"] for e in changes] == ["warning", "critical", "ok"]
    assert [e["log_level"] for e in changes] == ["warning", "error", "info"]
    assert len(levels) == 3 and [c[2] for c in w.mda_changes] == [
        Level.WARNING, Level.CRITICAL, Level.OK]
    snap = w.snapshot()[0]
    assert snap["mda_free"] == 30 * MiB and snap["mda_level"] == "ok"
    assert snap["mda_extends_left"] == 30 * MiB // 128


async def test_figures_without_metadata_are_never_held() -> None:
    src = Source()
    src.figs["vg0"] = VgFigures("vg0", 1024 * MiB, 512 * MiB)  # loop / in-memory backends
    w = CapacityWatcher(CapacitySettings(), src, ManualClock())
    await w.look(["vg0"], {})
    assert w.state["vg0"].mda_level is Level.OK and w.state["vg0"].mda_extends_left is None
    assert w.gate(VolumeRef("vg0", "lv"), False) is None


def test_config_levels_are_validated() -> None:
    s = CapacitySettings()
    assert (s.mda_warning_percent_free, s.mda_critical_percent_free) == (20.0, 5.0)
    assert CapacitySettings.model_validate({"mda_critical_percent_free": 0}).mda_levels == \
        MdaLevels(20.0, 0.0)
    assert CapacitySettings.model_validate({"mda_warning_percent_free": 0,
                                            "mda_critical_percent_free": 30}).mda_levels == \
        MdaLevels(0.0, 30.0)
    for bad in ({"mda_critical_percent_free": 20}, {"mda_warning_percent_free": 100},
                {"mda_critical_percent_free": -1}, {"mda_warning_percent_free": "x"}):
        with pytest.raises(ValidationError):
            CapacitySettings.model_validate(bad)
