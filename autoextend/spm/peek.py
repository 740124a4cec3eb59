"""The ring peeker: a long-lived thread that reads ring sectors on the ring watch's cadences
and tells the server which hosts' sectors changed. A hint of *when* to read, never *what*.

Why: an idle SPM's cost is its wake-ups. On the event loop each read of the ring sectors
costs a loop wake, a worker-thread hop and an anyio timeout scope (0.6-0.7 ms of CPU here);
in a thread of its own, on its own descriptor and buffer, the same read costs a timer wake
and the read itself (0.13 ms), and the loop sleeps until a sector really changed. That is
what lets a quiet live host's ring sector be read every 40 ms at under 0.4 % of a core
(``spm/README.md``, "Cadence, reads and CPU"; ``cadence.py``).

Why it cannot lose a request: the peeker is only a hint. The server reads every ring sector
itself, on the loop, at least every ``max(PEEK_FALLBACK_S, sweep)`` (``watch.py``), and takes
requests only from its own reads, exactly as without a peeker; the ring argument in
``watch.py`` (one writer per sector, ``(generation, count)`` never repeats) needs nothing
else. When the peeker sees a sector differ from what *it* read last, it tells the loop, which
reads those sectors at once through the normal path. A peeker that dies, hangs in a read,
misses a change or reports a wrong one costs latency (up to the fallback period) or one
extra read, never a request.

The schedule (:func:`plan_wake`) is pure: read each group of ring sectors every its
interval; a group due shortly before another one waits for it (at most
``DEFER_FRACTION`` of its interval), so the sweep and the live sweep share a wake-up and,
when adjacent, one read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from autoextend.spm.layout import contiguous_runs

#: A group due before another one may wait for it this fraction of its own interval.
DEFER_FRACTION = 0.1
MAX_READ_BYTES = 1 << 20  # one read covers at most this much
_EPSILON = 1e-6


class BlockingReader(Protocol):
    """Blocking whole-sector reads, used by one thread (``directio.DirectReader``)."""

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


PeekSource = Callable[[], BlockingReader]


@dataclass(frozen=True)
class PeekGroup:
    """Ring sectors read together, every ``interval_s``."""

    hosts: tuple[int, ...]
    interval_s: float


def plan_wake(nexts: Sequence[float], intervals: Sequence[float]) -> tuple[float, list[int]]:
    """When to wake next and which groups to read then (pure). ``nexts[i]``: when group
    ``i`` is due. The wake is the latest due time that keeps every group read then within
    ``DEFER_FRACTION`` of its interval of its due time: never before the first due time,
    never later than any group's slack allows, and a group is read at most its slack late."""
    if not nexts:
        raise ValueError("no group to plan")
    limit = min(t + DEFER_FRACTION * i for t, i in zip(nexts, intervals, strict=True))
    wake = max(t for t in nexts if t <= limit + _EPSILON)
    due = [i for i, t in enumerate(nexts) if t <= wake + _EPSILON]
    return wake, due


def changed_hosts(data: bytes, first: int, sector_size: int,
                  last: dict[int, bytes]) -> list[int]:
    """The hosts of a run read from ``first`` on whose sector differs from ``last`` (or was
    never seen); ``last`` is updated (pure but for that dict)."""
    changed = []
    for n in range(len(data) // sector_size):
        raw = data[n * sector_size : (n + 1) * sector_size]
        host = first + n
        if last.get(host) != raw:
            last[host] = raw
            changed.append(host)
    return changed


@dataclass
class PeekStats:
    """Counted by the peeker's thread, read by the loop (plain ints: a racy read is fine)."""

    wakes: int = 0
    reads: int = 0
    read_bytes: int = 0
    errors: int = 0
    changes: int = 0


class Peeker:
    """The thread. ``notify(hosts)`` and ``failed(reason)`` are called from it: they must be
    thread-safe (the ring watch passes ``loop.call_soon_threadsafe`` wrappers); when
    ``notify`` raises (the loop is gone), the thread ends."""

    def __init__(
        self,
        source: PeekSource,
        ring_offset: Callable[[int], int],
        sector_size: int,
        notify: Callable[[list[int]], object],
        failed: Callable[[str], object],
        seed: Mapping[int, bytes],
    ) -> None:
        self._source = source
        self._ring_offset = ring_offset
        self._ss = sector_size
        self._notify = notify
        self._failed = failed
        self._last = dict(seed)  # the bytes this thread last saw of each ring sector
        self._last_runs: dict[int, bytes] = {}  # ... and of each read, by its offset
        self._groups: tuple[PeekGroup, ...] = ()
        self._version = 0
        self._stopping = False
        self.stats = PeekStats()
        self._thread = threading.Thread(target=self._run, name="spm-ring-peeker", daemon=True)

    def configure(self, groups: Sequence[PeekGroup]) -> None:
        """Read these groups from now on (taken up at the thread's next wake)."""
        self._groups = tuple(g for g in groups if g.hosts)
        self._version += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (at its next wake; it is a daemon and holds no lock)."""
        self._stopping = True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            reader = self._source()
        except Exception as err:  # any failure leaves the server on its own cadence
            self._report(err)
            return
        try:
            self._loop(reader)
        except Exception as err:
            self._report(err)
        finally:
            reader.close()

    def _report(self, err: Exception) -> None:
        if self._stopping:
            return
        try:
            self._failed(f"{type(err).__name__}: {err}")
        except Exception:  # noqa: S110 - the loop is gone: nobody is left to tell
            pass

    def _loop(self, reader: BlockingReader) -> None:
        version = -1
        groups: tuple[PeekGroup, ...] = ()
        intervals: list[float] = []
        nexts: list[float] = []
        plans: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        while not self._stopping:
            now = time.monotonic()
            if version != self._version:
                version, groups = self._version, self._groups
                intervals = [g.interval_s for g in groups]
                nexts = [now + i for i in intervals]
                plans = {}
            if not groups:
                time.sleep(0.1)
                continue
            wake, due = plan_wake(nexts, intervals)
            if wake > now:
                time.sleep(wake - now)
                if self._stopping or version != self._version:
                    continue
            self.stats.wakes += 1
            key = tuple(due)
            runs = plans.get(key)
            if runs is None:
                runs = plans[key] = self._runs_of({h for i in due for h in groups[i].hosts})
            changed = self._read(reader, runs)
            now = time.monotonic()
            for i in due:
                nexts[i] = now + intervals[i]
            if changed:
                self.stats.changes += len(changed)
                self._notify(changed)

    def _runs_of(self, hosts: set[int]) -> list[tuple[int, int, int]]:
        """``(offset, length, first host)`` of each read covering ``hosts``."""
        ss = self._ss
        return [(self._ring_offset(first), count * ss, first)
                for first, count in contiguous_runs(sorted(hosts), max(1, MAX_READ_BYTES // ss))]

    def _read(self, reader: BlockingReader, runs: list[tuple[int, int, int]]) -> list[int]:
        changed: list[int] = []
        for offset, length, first in runs:
            try:
                data = reader.read(offset, length)
            except Exception:  # the loop's own reads count and log I/O errors
                self.stats.errors += 1
                continue
            self.stats.reads += 1
            self.stats.read_bytes += length
            if self._last_runs.get(offset) == data:
                continue  # the same bytes as this run's last read: no sector changed
            self._last_runs[offset] = data
            changed += changed_hosts(data, first, self._ss, self._last)
        return changed
