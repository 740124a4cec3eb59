"""Capacity math: pure functions, no I/O, parameters passed in.

Derivations:

* **Level.** A VG is ``critical`` when its free bytes fall below ``critical_free``
  (vdsm/engine: ``critical_space_action_blocker``), else ``warning`` when free is below
  ``warn_free_percent`` of its size (the engine's ``warning_low_space_indicator``; dmeventd
  warns at 80 % used, so 20 % free by default), else ``ok``. A level of 0 is off.
* **Extension rate.** The bytes the VG's free space lost between two looks, divided by the
  time between them, averaged with an exponential moving average whose time constant is
  ``window`` seconds: ``rate += (1 - exp(-dt / window)) * (instant - rate)``. Space that
  comes back (``vgextend``, a reduce, an ``lvremove``) counts as zero consumption, not as a
  negative one, so the rate only ever says how fast space is being used.
* **Headroom.** ``free / rate`` seconds: how long until the VG is full at the recent rate;
  infinite while nothing is being used.
* **Reduce target.** ``round_up(end + (chunk if leaf else 0), extent)``: the image's end
  offset (what ``qemu-img check`` reports), plus one chunk of room for a leaf that will be
  written again, rounded up to whole extents. Never below ``end``, never above the current
  size (a reduce never grows).
* **Metadata area level.** lvm2 keeps a VG's text metadata in a circular buffer on each PV
  (the metadata area, ``pvcreate --metadatasize``); every change writes a new copy after the
  old one, so ``vg_mda_free`` is the area's size, less its header, halved, less the
  metadata's current size: at most about half of ``vg_mda_size``, and 0 when the next change
  that grows the metadata fails ("exceeds maximum metadata size"). Each extend of a
  fragmented LV adds one segment (about 110 bytes of text with lvm2 2.03), so a pool of many
  LVs extended often runs the area full (LINBIT/linstor-server#250 at ~1,400 LVs). The
  level: ``critical`` when ``mda_free`` is below ``critical_percent`` of ``mda_size``, else
  ``warning`` below ``warning_percent`` (vdsm creates 128 MiB areas and flags one under
  20 % free; defaults 20 and 5), else ``ok``. A level of 0 is off; unknown figures are ok.
  As ``vg_mda_free`` starts at about half the size, 20 % free means the metadata fills about
  60 % of the room lvm2 can use, 5 % about 90 %.
* **Metadata bytes per extend.** Measured, not assumed: between two looks at which the VG's
  LV segments (``lvs -o seg_count``, summed) grew by at least ``SEGMENT_SAMPLE`` (16) and
  ``vg_mda_free`` did not rise, one sample is the drop in ``vg_mda_free`` over the segments
  added (lvm2 reports it in 512-byte steps, hence 16 segments at least: the error of one
  sample is below 32 bytes); an exponential moving average of the samples with weight
  ``SEGMENT_ALPHA`` (0.25). A look at which the segments fell or the free space rose (an
  ``lvremove``, a reduce, a larger area) restarts the measure there, and so does a sample
  under ``SEGMENT_MIN_BYTES`` (16) per segment (metadata freed in the same interval).
  Before the first sample it is ``SEGMENT_BYTES_ESTIMATE`` (128 bytes, above the ~110
  measured). Creating an LV also adds a segment but costs about twice more (its header):
  counted in, it makes the average larger, which errs on the safe side. Every extend is
  counted as adding a segment (the worst case, what a pool of interleaved extends does), so
  **extends left** is ``mda_free // bytes_per_extend``.
* **LVs an area holds** (``config check --live``): lvm2 can use about half the area, and the
  warning level leaves ``warning_percent`` of the size free, so the metadata may grow to
  ``size * (50 - warning_percent) / 100`` before the warning; an LV is planned at
  ``LV_HEADER_BYTES`` (400: ~250 measured without tags, vdsm's tags add ~150) plus
  ``PLANNED_SEGMENTS`` (50) segments of ``SEGMENT_BYTES_ESTIMATE``: ~6.8 KB. A 128 MiB area
  (vdsm's) holds ~5,900 such LVs at 20 %; lvm2's default ~1 MiB area ~45.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from autoextend.volumes import VgFigures

__all__ = ["Level", "Levels", "MdaLevels", "MdaMeasure", "MiB", "VgFigures",
           "extends_left", "headroom_seconds", "level_of", "lvs_the_area_holds",
           "mda_level_of", "overcommit_ratio", "reduce_target", "round_up",
           "update_mda_measure", "update_rate"]

MiB = 1 << 20


class Level(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Levels:
    """One VG's levels: ``warn_free_percent`` in [0, 100) (0 = off), ``critical_free``
    bytes (0 = off)."""

    warn_free_percent: float
    critical_free: int


def level_of(size: int, free: int, levels: Levels) -> Level:
    """The VG's level (see the module docs). ``size`` 0 (unknown) is never a warning."""
    if levels.critical_free > 0 and free < levels.critical_free:
        return Level.CRITICAL
    if levels.warn_free_percent > 0 and size > 0 and free * 100 < levels.warn_free_percent * size:
        return Level.WARNING
    return Level.OK


@dataclass(frozen=True)
class MdaLevels:
    """The metadata area levels in percent of ``vg_mda_size`` free, in [0, 100) (0 = off)."""

    warning_percent: float
    critical_percent: float


def mda_level_of(mda_size: int | None, mda_free: int | None, levels: MdaLevels) -> Level:
    """The metadata area's level (see the module docs); unknown or empty figures are ok."""
    if mda_size is None or mda_free is None or mda_size <= 0:
        return Level.OK
    if levels.critical_percent > 0 and mda_free * 100 < levels.critical_percent * mda_size:
        return Level.CRITICAL
    if levels.warning_percent > 0 and mda_free * 100 < levels.warning_percent * mda_size:
        return Level.WARNING
    return Level.OK


SEGMENT_SAMPLE = 16
SEGMENT_ALPHA = 0.25
SEGMENT_BYTES_ESTIMATE = 128.0
SEGMENT_MIN_BYTES = 16.0


@dataclass(frozen=True)
class MdaMeasure:
    """The measure of metadata bytes per extend: the average, whether it was measured, and
    the look it measures from (``mda_free``, segments)."""

    bytes_per_extend: float = SEGMENT_BYTES_ESTIMATE
    measured: bool = False
    ref_free: int | None = None
    ref_segments: int | None = None


def update_mda_measure(m: MdaMeasure, mda_free: int | None, segments: int | None) -> MdaMeasure:
    """The measure after one more look (see the module docs). Unknown figures leave it."""
    if mda_free is None or segments is None:
        return m
    if m.ref_free is None or m.ref_segments is None or segments < m.ref_segments \
            or mda_free > m.ref_free:
        return MdaMeasure(m.bytes_per_extend, m.measured, mda_free, segments)
    added = segments - m.ref_segments
    if added < SEGMENT_SAMPLE:
        return m
    sample = (m.ref_free - mda_free) / added
    if sample < SEGMENT_MIN_BYTES:  # metadata was also freed in between: no measure
        return MdaMeasure(m.bytes_per_extend, m.measured, mda_free, segments)
    avg = sample if not m.measured else m.bytes_per_extend + SEGMENT_ALPHA * (
        sample - m.bytes_per_extend)
    return MdaMeasure(avg, True, mda_free, segments)


def extends_left(mda_free: int, bytes_per_extend: float) -> int:
    """Extends (each adding a segment) until the metadata area is full."""
    return int(max(0, mda_free) // max(bytes_per_extend, SEGMENT_MIN_BYTES))


LV_HEADER_BYTES = 400
PLANNED_SEGMENTS = 50


def lvs_the_area_holds(mda_size: int, warning_percent: float) -> int:
    """How many LVs of ``PLANNED_SEGMENTS`` segments fit in a metadata area of ``mda_size``
    bytes before its warning level (see the module docs)."""
    per_lv = LV_HEADER_BYTES + PLANNED_SEGMENTS * SEGMENT_BYTES_ESTIMATE
    room = max(0.0, mda_size * (50.0 - min(warning_percent, 50.0)) / 100.0)
    return int(room // per_lv)


def update_rate(rate: float, free_before: int, free_now: int, dt: float, window: float) -> float:
    """The moving average of consumed bytes per second after one more look (``dt`` seconds
    after the previous one). ``dt <= 0`` leaves the rate as it is."""
    if dt <= 0 or window <= 0:
        return rate
    instant = max(0, free_before - free_now) / dt
    alpha = 1.0 - math.exp(-dt / window)
    return rate + alpha * (instant - rate)


def headroom_seconds(free: int, rate: float) -> float:
    """Seconds until the VG is full at ``rate`` bytes/s; ``inf`` when nothing is used."""
    if rate <= 0.0:
        return math.inf
    return max(0, free) / rate


def overcommit_ratio(committed: int, size: int) -> float:
    """Committed bytes over the VG's size (0 for an empty or unknown VG)."""
    return committed / size if size > 0 else 0.0


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def reduce_target(end: int, current: int, chunk: int, extent: int, *, leaf: bool) -> int:
    """The size to reduce a volume to (``current`` when there is nothing to give back).

    ``end``: the image end offset ``qemu-img check`` reports; ``chunk``: the volume's growth
    unit; ``extent``: the VG's extent size."""
    if end < 0 or current < 0 or chunk <= 0 or extent <= 0:
        raise ValueError("sizes must be >= 0 and chunk, extent > 0")
    target = round_up(end + (chunk if leaf else 0), extent)
    return min(current, max(target, extent))
