"""A drive's recent write rate and its headroom: pure functions, and one tracker.

Derivation. The monitor samples a drive's allocation (the highest written offset) at every
look (poll, event, extension). Between two samples ``(t0, a0)`` and ``(t1, a1)`` the guest
allocated at ``(a1 - a0) / (t1 - t0)`` bytes/s. The estimate rises at once to a higher
instantaneous rate and decays toward a lower one with a half-life
(``chunking.next_rate``): a burst is believed at once, a quiet spell lowers it slowly.

An extension starts when the threshold is crossed, so the space it has to work with is the
free space *above the threshold*: ``min(physical - allocation, watermark)`` (all of the
watermark before the crossing, what is left of it after). At the rate ``r`` that lasts

    headroom_s = free_above_threshold / r          (infinite while nothing is written)

and a guest pauses when its extension takes longer than that: the alert compares the
headroom with the p99 extension time, the write throttle (``monitor/throttle.py``) acts on
it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from autoextend.clock import Clock
from autoextend.monitor.chunking import next_rate, p99
from autoextend.monitor.observer import DriveGone, DriveSeen, ExtendFinished, MonitorEvent
from autoextend.monitor.protocols import DriveInfo, OutcomeKind
from autoextend.volumes import VolumeRef

#: Samples closer together than this are not a rate (a poll right after an event).
MIN_SAMPLE_GAP_S = 0.02
#: Extensions remembered for the p99 (and how many before it is believed).
LATENCY_WINDOW = 64
LATENCY_MIN_SAMPLES = 5


@dataclass(frozen=True)
class Sample:
    """The last allocation seen (at ``t``) and the rate estimate up to it (bytes/s)."""

    t: float
    allocation: int
    rate: float = 0.0


def update(prev: Sample | None, t: float, allocation: int, half_life_s: float) -> Sample:
    """The estimate after one more sample. A smaller allocation (a new image, a reduce)
    starts over; a sample too close to the last one is ignored."""
    if prev is None or allocation < prev.allocation:
        return Sample(t, allocation)
    dt = t - prev.t
    if dt < MIN_SAMPLE_GAP_S:
        return prev
    return Sample(t, allocation, next_rate(prev.rate, dt, allocation - prev.allocation,
                                           half_life_s))


def free_above_threshold(allocation: int, physical: int, watermark: int) -> int:
    """The space an extension started at the threshold has left: ``min(physical -
    allocation, watermark)``, never negative."""
    return max(0, min(physical - allocation, watermark))


def headroom_s(free: int, rate: float) -> float:
    """Seconds ``free`` bytes last at ``rate`` bytes/s (infinite at rate 0)."""
    return math.inf if rate <= 0 else free / rate


def predicted_allocation(sample: Sample, now: float, rate: float) -> int:
    """Where the allocation is now if the guest kept writing at ``rate`` since ``sample``."""
    return sample.allocation + int(max(0.0, rate) * max(0.0, now - sample.t))


@dataclass
class _Seen:
    sample: Sample
    physical: int
    watermark: int
    latest: int  # the newest allocation seen (also one too close to the last sample)


class DriveRates:
    """Every monitored drive's rate and the recent extension times: a monitor observer
    (``DriveSeen`` is a sample, ``ExtendFinished`` a latency, ``DriveGone`` forgets), and
    fed directly by the throttle's own looks (:meth:`sample`)."""

    def __init__(self, clock: Clock, half_life_s: float, assumed_latency_s: float,
                 watermark_of: Callable[[DriveInfo, VolumeRef], int] | None = None) -> None:
        """``watermark_of``: the drive's watermark now (the monitor's policy), for the
        samples ``DriveSeen`` brings; without it those are not sampled."""
        self.clock = clock
        self.half_life_s = half_life_s
        self.watermark_of = watermark_of
        self.assumed_latency_s = assumed_latency_s
        self._drives: dict[VolumeRef, _Seen] = {}
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        #: Volumes whose extension in flight the throttle found overdue (a failover): its
        #: time is left out of the p99 (the failover bound covers that case).
        self.overdue: set[VolumeRef] = set()

    def sample(self, volume: VolumeRef, t: float, allocation: int, physical: int,
               watermark: int) -> Sample:
        seen = self._drives.get(volume)
        s = update(seen.sample if seen else None, t, allocation, self.half_life_s)
        taken = seen is None or s is not seen.sample  # a new sample (or a fresh start)
        latest = allocation if taken or seen is None else max(seen.latest, allocation)
        self._drives[volume] = _Seen(s, physical, watermark, latest)
        return s

    def latest(self, volume: VolumeRef) -> int:
        """The newest allocation seen of the volume (0 for none)."""
        seen = self._drives.get(volume)
        return seen.latest if seen else 0

    def last(self, volume: VolumeRef) -> Sample | None:
        seen = self._drives.get(volume)
        return seen.sample if seen else None

    def latency_s(self) -> float:
        """The p99 extension time (event to the grown volume, before the re-arm), or the
        assumed one until measured."""
        if len(self._latencies) < LATENCY_MIN_SAMPLES:
            return self.assumed_latency_s
        return p99(self._latencies)

    def headrooms(self) -> dict[str, float]:
        """``autoextend_drive_headroom_seconds``: per volume, the free space above the
        threshold over the rate, as of the last sample (volumes with no rate yet are left
        out; a drive written at 0 bytes/s has no finite headroom either)."""
        out: dict[str, float] = {}
        for volume, seen in self._drives.items():
            h = headroom_s(free_above_threshold(seen.latest, seen.physical,
                                                seen.watermark), seen.sample.rate)
            if math.isfinite(h):
                out[str(volume)] = h
        return out

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case ExtendFinished(kind=OutcomeKind.OK, phases=phases, volume=volume):
                if volume in self.overdue:
                    self.overdue.discard(volume)
                elif "total" in phases:
                    # Until the space is there: the re-arm's commands (and the throttle's
                    # lift in that step) come after it, and a guest does not wait for them.
                    self._latencies.append(max(0.0, phases["total"] - phases.get("rearm", 0.0)))
            case DriveGone(volume=volume):
                self._drives.pop(volume, None)
                self.overdue.discard(volume)
            case DriveSeen(info=info, volume=volume) if self.watermark_of is not None:
                self.sample(volume, self.clock.now(), info.allocation, info.physical,
                            self.watermark_of(info, volume))
            case _:
                pass
