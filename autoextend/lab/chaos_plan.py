"""The chaos soak's pure parts: the seeded fault schedule and the invariants it checks.

No I/O here: :mod:`autoextend.lab.chaos` runs the schedule against real processes and feeds
what it saw (the hosts' JSON log events, sizes, guest results) to these functions, which
``tests/lab/test_chaos_plan.py`` checks with hypothesis.

The schedule has two lanes that run side by side, so that faults overlap as they do in
production (a VG fills during a failover, a guest migrates while the SPM moves):

- lane 0, the hosts: ``kill-host`` (SIGKILL of a host's service, restarted after the hold, as
  systemd would), ``stop-spm`` (SIGSTOP of the SPM's process for the hold, then SIGCONT: a
  frozen holder whose lease expires under it), ``kill-spm``, ``step-down``, ``reload`` (a
  valid changed config and SIGHUP) and ``reload-broken`` (a broken file and SIGHUP; then the
  good file back and SIGHUP);
- lane 1, storage and guests: ``vg-full`` (the VG has no free extent for the hold, then
  grows again), ``migrate`` (a live migration of a guest to another host, held slow for
  the hold, then let finish), ``meta-errors`` (every read and write of the metadata area
  fails with EIO for 5 to 30 s: on every host, as when the LUN fails, or on one host's path
  only; each host reaches the area through its own fault file system mount) and
  ``guest-eio`` (every read and write of one guest's own volume fails with EIO for the
  hold: the guest pauses, ``werror=stop``, and autoextend resumes it after the heal).

Each lane's faults follow one another: a gap, the fault held, healed, the next gap.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

HOST_FAULTS = ("kill-host", "stop-spm", "kill-spm", "step-down", "reload", "reload-broken")
POOL_FAULTS = ("vg-full", "migrate", "meta-errors", "guest-eio")
STORAGE_FAULTS = ("meta-errors",)  # held for Timing.storage_hold
FAULT_KINDS = HOST_FAULTS + POOL_FAULTS


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: start ``at_s`` after the soak starts, held ``hold_s``.
    ``pick`` is a seeded number the runner uses to choose its target (host, guest)."""

    at_s: float
    kind: str
    hold_s: float
    lane: int
    pick: int


@dataclass(frozen=True)
class Timing:
    """The schedule's ranges, seconds."""

    hold: tuple[float, float] = (3.0, 12.0)
    gap: tuple[float, float] = (2.0, 8.0)
    storage_hold: tuple[float, float] = (5.0, 30.0)

    def hold_of(self, kind: str) -> tuple[float, float]:
        return self.storage_hold if kind in STORAGE_FAULTS else self.hold


def plan_faults(seed: int, duration_s: float, timing: Timing = Timing(),
                kinds: Sequence[str] = FAULT_KINDS) -> list[Fault]:
    """The fault schedule of a soak: the same ``seed`` gives the same faults. Every fault
    starts and is healed within ``duration_s``; a lane's faults never overlap each other."""
    rng = random.Random(seed)
    lanes = [tuple(k for k in HOST_FAULTS if k in kinds),
             tuple(k for k in POOL_FAULTS if k in kinds)]
    faults: list[Fault] = []
    for lane, choices in enumerate(lanes):
        if not choices:
            continue
        # Whole milliseconds throughout, the next start counted from the rounded ones: a gap
        # counted from unrounded times came out up to 1 ms short (seed 902, 2648 s).
        t = round(rng.uniform(*timing.gap), 3)
        while True:
            kind = rng.choice(choices)
            hold = round(rng.uniform(*timing.hold_of(kind)), 3)
            if t + hold > duration_s:
                break
            faults.append(Fault(t, kind, hold, lane, rng.randrange(1 << 30)))
            t = round(t + hold + rng.uniform(*timing.gap), 3)
    return sorted(faults, key=lambda f: (f.at_s, f.lane))


# ------------------------------------------------------------------ how much the guests write

EXTENTS_PER_MINUTE = 4  # the fastest guest needs at least this many extensions a minute


def rate_scale(rates_mib_s: tuple[float, float], duration_s: float, max_mib: int) -> float:
    """The factor (at most 1) the guests' write rates are scaled by so that the fastest
    possible guest writes at most ``max_mib`` in ``duration_s``: a long soak writes at
    lower rates instead of rate x duration (an hour at 2 MiB/s is 7 GiB per guest)."""
    fastest = rates_mib_s[1] * duration_s
    return 1.0 if fastest <= max_mib else max_mib / fastest


def guest_mib(rate_mib_s: float, duration_s: float, chunk_mib: int, max_mib: int) -> int:
    """What one guest writes: its rate for the whole soak, at least two chunks (so that it
    needs an extension), at most ``max_mib``."""
    return min(max_mib, max(2 * chunk_mib, int(rate_mib_s * duration_s)))


def soak_chunk_mib(fastest_mib_s: float, chunk_mib: int, extent_mib: int) -> int:
    """The chunk the hosts extend by: ``chunk_mib``, or smaller (whole extents, at least
    one) when the guests write so slowly that the fastest would need fewer than
    EXTENTS_PER_MINUTE extensions a minute."""
    per_minute = fastest_mib_s * 60.0 / EXTENTS_PER_MINUTE
    fits = int(per_minute // extent_mib) * extent_mib
    return max(extent_mib, min(chunk_mib, fits))


# ------------------------------------------------------------------ invariants over logs


def when(event: Mapping[str, Any]) -> float:
    """An event's wall-clock time (structlog's ISO ``timestamp``) in seconds, or 0.0."""
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return 0.0
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def spm_writer_violations(events: Iterable[tuple[int, Mapping[str, Any]]]) -> list[str]:
    """Never two SPM writers in one term, and no write under a term older than the newest
    one started. ``events``: ``(host_id, event)`` from every host's log.

    A term is its ``lver``: each ``SPM term started`` names one; each metadata change
    (``volume extended``) names the term it was made under. Violations: a term started by
    two hosts; a change under a term by a host that did not start it; a change under a term
    older than one another host had started before it (a stale SPM wrote)."""
    starts = sorted(((when(e), host, int(e["lver"])) for host, e in events
                     if e.get("event") == "SPM term started" and isinstance(e.get("lver"), int)),
                    key=lambda x: x[0])
    owner: dict[int, int] = {}
    out: list[str] = []
    for _, host, lver in starts:
        if owner.setdefault(lver, host) != host:
            out.append(f"term {lver} started by hosts {owner[lver]} and {host}")
    for host, e in events:
        if e.get("event") != "volume extended" or not isinstance(e.get("lver"), int):
            continue
        lver, t = int(e["lver"]), when(e)
        if owner.get(lver, host) != host:
            out.append(f"host {host} changed {e.get('volume')} under term {lver} of host "
                       f"{owner[lver]}")
        newer = [(s, h, v) for s, h, v in starts if v > lver and h != host and s < t]
        if newer:
            s, h, v = newer[0]
            out.append(f"host {host} changed {e.get('volume')} under term {lver} at "
                       f"{e.get('timestamp')}, {t - s:.3f} s after host {h} started term {v}")
    return out


def tracebacks(host: int, text: str) -> list[str]:
    """Lines of a host's log that carry a Python traceback (an unexpected exception)."""
    found = []
    for line in text.splitlines():
        if "Traceback (most recent call last)" in line or '"exception":' in line:
            found.append(f"host {host}: {line[:300]}")
    return found


def growth_violation(name: str, size: int, start: int, image_end: int, chunk: int,
                     extent: int) -> str | None:
    """No volume grew more than its writes need plus two chunks: ``size`` is at most the
    larger of its start size and the qcow2 image's end (what the writes need), plus two
    chunks, rounded up to the extent."""
    need = max(start, image_end)
    bound = -(-(need + 2 * chunk) // extent) * extent
    if size > bound:
        return (f"{name}: {size} bytes, more than its writes need ({need}) plus two chunks "
                f"({bound})")
    return None


@dataclass(frozen=True)
class Pause:
    vm: str
    host: int
    reason: str
    start: float
    end: float | None  # None: not resumed (yet)
    gone: bool = False  # ended by the VM leaving the host (migrated away, or its QEMU ended)
    restarted: bool = False  # ended by its host's service starting again (what it knew ends)

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end - self.start


def pauses(events: Iterable[tuple[int, Mapping[str, Any]]]) -> list[Pause]:
    """Every ``vm paused`` a host logged, ended by that host's next ``vm resumed`` or
    ``vm runs again`` of the same VM, or by its ``vm gone`` (the VM left the host: a
    migration's source, paused when the switchover came, does not resume there; counted
    to its next resume on that host, such a pause looked minutes long), or by that host's
    ``service ready`` (its service was killed and started again: a VM still paused there
    is logged paused again, and one that left meanwhile is never logged gone there; stop
    41's soak counted such a pause as 23 minutes). A pause seen by two hosts, e.g. across a
    migration, counts on each."""
    open_: dict[tuple[int, str], tuple[str, float]] = {}
    out: list[Pause] = []
    for host, e in sorted(events, key=lambda he: when(he[1])):
        vm, event = e.get("vm"), e.get("event")
        if event == "service ready":
            for key in [k for k in open_ if k[0] == host]:
                reason, start = open_.pop(key)
                out.append(Pause(key[1], host, reason, start, when(e), restarted=True))
            continue
        if not isinstance(vm, str):
            continue
        if event == "vm paused":
            open_.setdefault((host, vm), (str(e.get("reason", "")), when(e)))
        elif event in ("vm resumed", "vm runs again (resumed by someone else)"):
            begun = open_.pop((host, vm), None)
            if begun is not None:
                out.append(Pause(vm, host, begun[0], begun[1], when(e)))
        elif event == "vm gone":
            begun = open_.pop((host, vm), None)
            if begun is not None:
                out.append(Pause(vm, host, begun[0], begun[1], when(e), gone=True))
    out.extend(Pause(vm, host, reason, start, None)
               for (host, vm), (reason, start) in open_.items())
    return sorted(out, key=lambda p: p.start)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def extension_latencies(events: Iterable[tuple[int, Mapping[str, Any]]]
                        ) -> dict[str, list[float]]:
    """Per host, the monitor's ``extended`` durations (threshold event to re-armed)."""
    out: dict[str, list[float]] = defaultdict(list)
    for host, e in events:
        if e.get("event") == "extended" and isinstance(e.get("duration_s"), (int, float)):
            out[str(host)].append(float(e["duration_s"]))
    return dict(out)
