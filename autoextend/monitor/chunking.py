"""Chunks sized by write rate (``[policy] chunk_mode = "write_rate"``): pure rules, one tracker.

Derivation. The watermark (free space kept ahead of the guest) must outlast one extension:
while an extension runs, the guest keeps writing, so

    watermark >= rate x latency x margin

with ``rate`` the drive's allocation rate (bytes/s), ``latency`` the p99 of recent extensions
(event to re-armed threshold) and ``margin`` a safety factor. Since the watermark is
``(100 - utilization)%`` of a chunk (``policy.watermark``), the chunk needed is

    chunk = ceil(rate x latency x margin x 100 / (100 - utilization))

rounded up to the extent and bounded by ``[min_chunk, max_chunk]``; near the cap it is no
larger than the room left (never below ``min_chunk``), so a full drive does not keep a
watermark it can never use. A slow writer keeps ``min_chunk`` (little space stranded); a burst
gets a larger chunk at its next decision.

The rate is a moving average that rises at once and decays with a half-life
(:func:`next_rate`): a burst is believed immediately, quiet time lowers the estimate slowly.
Until a drive has a rate, its chunk is the configured fixed ``chunk_mib``.

Combined with the throttle (``chunk_mode = "write_rate_throttle"``, issue 30 item 6). The
rule above alone strands more than the fixed chunk at high rates (its watermark is the
burst's rate x latency), and still pauses past ``max_chunk``. The combined policy splits the
work:

* the chunk follows the rule above with a per-drive margin, but is never larger than the
  fixed chunk (``chunk_mib``, the drive's overrides included): at every rate it strands at
  most what the fixed chunk strands (:func:`combined_chunk`). A drive not yet seen writing
  keeps the fixed chunk (an idle rate says nothing about the first burst);
* the throttle (``monitor/throttle.py``) carries whatever that watermark cannot: an
  extension past its p99, an SPM failover, and a rate past ``watermark / p99``. A throttled
  guest is slowed, never paused, as long as its limit is in place before the watermark is
  gone and ``free / expected`` stays above the floor. A limit set once an extension started
  comes a few monitor commands late, later than a fast guest fills a small watermark: in
  this mode a guest faster than its watermark covers keeps a limit from one re-arm to the
  next (``throttle.steady_limit``: watermark / (p99 x margin)), lifted once it slows down;
* the near-miss figure (the fraction of the watermark left when each extension landed,
  ``WatermarkLeft``) corrects the margin per drive (:func:`next_margin`): a landing with
  less than :data:`NEAR_MISS_LOW` left (the estimate lagged the guest, or the throttle had
  to hold it) doubles it, one with more than :data:`NEAR_MISS_HIGH` left lowers it by
  :data:`MARGIN_DECAY` toward the configured ``rate_margin``; at most :data:`MAX_MARGIN`.
  The ceiling above still holds, so the feedback only moves a drive between little
  stranded space and little throttling, never past the fixed chunk.

So after a drive's first extension at a rate, no pause happens at any rate (the first one
still needs its watermark to outlast the throttle's reaction: the rule cannot know a burst
before it sees one), and the guest keeps its full rate whenever the fixed chunk's watermark
covers ``rate x p99 x margin``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

from autoextend.clock import Clock
from autoextend.monitor import overrides
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.observer import DriveGone, ExtendFinished, MonitorEvent, WatermarkLeft
from autoextend.monitor.policy import DrivePolicy, MiB, round_up
from autoextend.monitor.protocols import DriveInfo, OutcomeKind
from autoextend.volumes import VolumeRef

#: Extensions remembered for the latency estimate (its p99 is taken over these).
LATENCY_WINDOW = 64
#: Before this many extensions were measured, the configured ``assumed_latency_s`` is used.
LATENCY_MIN_SAMPLES = 5
#: Allocation samples closer together than this are merged (a poll right after an event).
MIN_SAMPLE_GAP_S = 0.02
#: Near-miss feedback (combined mode): a landing with less of the watermark left than this
#: grows the drive's margin by MARGIN_GROW ...
NEAR_MISS_LOW = 0.25
MARGIN_GROW = 2.0
#: ... and one with more left than this lowers it by MARGIN_DECAY (not below rate_margin).
NEAR_MISS_HIGH = 0.75
MARGIN_DECAY = 0.8
#: The most a drive's margin grows to (times rate x latency).
MAX_MARGIN = 64.0

#: The chunk modes that size chunks by the write rate.
RATE_MODES = ("write_rate", "write_rate_throttle")


@dataclass(frozen=True)
class RateChunkParams:
    """Write-rate sizing parameters, in bytes and seconds."""

    min_chunk: int
    max_chunk: int
    margin: float
    half_life_s: float
    assumed_latency_s: float

    def __post_init__(self) -> None:
        if not 0 < self.min_chunk <= self.max_chunk:
            raise ValueError("need 0 < min_chunk <= max_chunk")
        if self.margin < 1.0 or self.half_life_s <= 0 or self.assumed_latency_s <= 0:
            raise ValueError("margin must be >= 1, half_life_s and assumed_latency_s > 0")


def rate_chunk(
    rate: float, latency_s: float, params: RateChunkParams, utilization_percent: int,
    extent: int, room_to_cap: int,
) -> int:
    """The chunk whose watermark covers ``rate x latency_s x margin`` (see module doc).

    Always in ``[min_chunk, max_chunk]``; a multiple of ``extent`` unless a bound is not;
    at most ``room_to_cap`` (in whole extents) when that is at least ``min_chunk``.
    """
    needed = max(0.0, rate) * max(0.0, latency_s) * params.margin
    free_share = 100 - utilization_percent
    chunk = math.ceil(needed * 100 / free_share) if needed < 1 << 62 else params.max_chunk
    chunk = round_up(max(chunk, 1), extent)
    chunk = min(max(chunk, params.min_chunk), params.max_chunk)
    room = room_to_cap // extent * extent
    if room >= params.min_chunk:
        chunk = min(chunk, room)
    return chunk


def combined_chunk(
    rate: float, latency_s: float, margin: float, params: RateChunkParams,
    utilization_percent: int, extent: int, room_to_cap: int, fixed_chunk: int,
) -> int:
    """The combined policy's chunk (see module doc): :func:`rate_chunk` with the drive's
    ``margin``, never larger than ``fixed_chunk`` (nor smaller than one extent).

    In ``[min(min_chunk, ceiling), ceiling]`` with ``ceiling = min(max_chunk,
    fixed_chunk)`` (rounded to the extent); at most ``room_to_cap`` when that is at least
    the lower bound.
    """
    ceiling = max(extent, min(params.max_chunk, round_up(max(fixed_chunk, 1), extent)))
    lowest = min(params.min_chunk, ceiling)
    bounded = replace(params, min_chunk=lowest, max_chunk=ceiling,
                      margin=min(max(margin, params.margin), MAX_MARGIN))
    return rate_chunk(rate, latency_s, bounded, utilization_percent, extent, room_to_cap)


def next_margin(margin: float, left_fraction: float, base: float) -> float:
    """The drive's margin after an extension landed with ``left_fraction`` of its
    watermark free (the near-miss feedback, see module doc); always in ``[base,
    MAX_MARGIN]`` (``base``: the configured ``rate_margin``)."""
    margin = min(max(margin, base), MAX_MARGIN)
    if math.isnan(left_fraction) or left_fraction < NEAR_MISS_LOW:
        return min(margin * MARGIN_GROW, MAX_MARGIN)
    if left_fraction > NEAR_MISS_HIGH:
        return max(margin * MARGIN_DECAY, base)
    return margin


def next_rate(rate: float, dt: float, grown: int, half_life_s: float) -> float:
    """The allocation rate after ``grown`` bytes in ``dt`` seconds: up at once to a higher
    instantaneous rate, else decayed toward it with ``half_life_s``."""
    if dt <= 0:
        return rate
    now = max(0, grown) / dt
    if now >= rate:
        return now
    keep: float = 0.5 ** (dt / half_life_s)
    return rate * keep + now * (1.0 - keep)


def p99(values: deque[float] | list[float]) -> float:
    """Nearest-rank p99 (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(0.99 * len(ordered)))) - 1]


@dataclass
class _Drive:
    t: float
    allocation: int
    rate: float = 0.0
    measured: bool = False
    chunk: int = 0
    margin: float = 0.0  # combined mode: the near-miss-corrected margin (0: rate_margin)
    grew: bool = False  # a sample showed the allocation growing (not only idle samples)


class WriteRateChunks:
    """The monitor's policy resolver: config defaults and overrides, and with
    ``chunk_mode = "write_rate"`` each drive's chunk sized by its write rate. Also a monitor
    observer (it learns the extension latency from ``ExtendFinished``).

    The monitor calls the resolver with fresh drive numbers at each decision (poll, event,
    extension); each call is one allocation sample for the drive's rate. In fixed mode it only
    records the chunk in use (for the metric).
    """

    def __init__(self, settings: PolicySettings, clock: Clock) -> None:
        self.clock = clock
        self._drives: dict[VolumeRef, _Drive] = {}
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.reconfigure(settings)

    def reconfigure(self, settings: PolicySettings) -> None:
        """A reloaded ``[policy]``: rates and latencies measured so far are kept."""
        self.settings = settings
        self.enabled = settings.chunk_mode in RATE_MODES
        #: ``write_rate_throttle``: chunks no larger than the fixed one, margins corrected
        #: by the near-miss figures, the throttle carrying the rest (module doc).
        self.combined = settings.chunk_mode == "write_rate_throttle"
        #: Read by the monitor: sample the drive once more right after each extension.
        self.sample_after_extend = self.enabled
        self.params = params_from(settings)

    def base(self, info: DriveInfo, volume: VolumeRef) -> DrivePolicy:
        return overrides.resolve(self.settings, info, volume)

    def latency_s(self) -> float:
        """The extension latency the watermark must cover (p99 of recent, or the assumed)."""
        if len(self._latencies) < LATENCY_MIN_SAMPLES:
            return self.params.assumed_latency_s
        return p99(self._latencies)

    def chunks(self) -> dict[VolumeRef, int]:
        """The chunk in use per drive (bytes), as last resolved."""
        return {v: d.chunk for v, d in self._drives.items() if d.chunk}

    def margins(self) -> dict[VolumeRef, float]:
        """Combined mode: the margin per drive (the configured one until corrected)."""
        return {v: d.margin or self.params.margin for v, d in self._drives.items()}

    def rate(self, volume: VolumeRef) -> float:
        d = self._drives.get(volume)
        return d.rate if d is not None else 0.0

    def __call__(self, info: DriveInfo, volume: VolumeRef) -> DrivePolicy:
        base = self.base(info, volume)
        now = self.clock.now()
        d = self._drives.get(volume)
        if d is None or info.allocation < d.allocation:
            d = self._drives[volume] = _Drive(now, info.allocation)
        elif now - d.t >= MIN_SAMPLE_GAP_S:
            d.rate = next_rate(d.rate, now - d.t, info.allocation - d.allocation,
                               self.params.half_life_s)
            d.measured = True
            d.grew = d.grew or info.allocation > d.allocation
            d.t, d.allocation = now, info.allocation
        if not (self.enabled and d.measured) or (self.combined and not d.grew):
            # Combined mode: a rate measured only while idle says nothing about the first
            # burst; the fixed chunk (the ceiling) carries it.
            d.chunk = base.chunk
            return base
        cap = round_up(math.ceil(info.capacity * base.cap_factor), base.extent)
        if self.combined:
            d.chunk = combined_chunk(d.rate, self.latency_s(), d.margin or self.params.margin,
                                     self.params, base.utilization_percent, base.extent,
                                     cap - info.physical, base.chunk)
        else:
            d.chunk = rate_chunk(d.rate, self.latency_s(), self.params,
                                 base.utilization_percent, base.extent, cap - info.physical)
        return replace(base, chunk=d.chunk)

    # ------------------------------------------------------------ observer side

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case ExtendFinished(kind=OutcomeKind.OK, phases=phases) if "total" in phases:
                self._latencies.append(phases["total"])
            case DriveGone(volume=volume):
                self._drives.pop(volume, None)
            case WatermarkLeft(volume=volume, fraction=fraction) if self.combined:
                d = self._drives.get(volume)
                if d is not None:
                    d.margin = next_margin(d.margin or self.params.margin, fraction,
                                           self.params.margin)
            case _:
                pass


def params_from(settings: PolicySettings) -> RateChunkParams:
    """``[policy]``'s write-rate keys in bytes (chunks rounded up to the extent)."""
    extent = settings.extent_mib * MiB
    return RateChunkParams(
        min_chunk=round_up(settings.min_chunk_mib * MiB, extent),
        max_chunk=round_up(settings.max_chunk_mib * MiB, extent),
        margin=settings.rate_margin,
        half_life_s=settings.rate_half_life_s,
        assumed_latency_s=settings.assumed_latency_s,
    )
