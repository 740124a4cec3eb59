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
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from autoextend.volumes import VgFigures

__all__ = ["Level", "Levels", "MiB", "VgFigures", "headroom_seconds", "level_of",
           "overcommit_ratio", "reduce_target", "round_up", "update_rate"]

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
