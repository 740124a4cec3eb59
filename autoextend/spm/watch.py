"""How the SPM notices new mail: every host's ring sector, read on two cadences.

Host ``h`` owns ring sector ``h`` (see ``layout.py``) and is the only writer of it. To send,
a host first writes its request sectors, waits until that write is durable, then writes its
ring sector with ``count + 1``. The SPM compares each ring sector it reads with what it saw
last time; any difference (a new count, a new generation, even different garbage) makes it
read that host's request box.

Why no ring can be lost: a ring sector has one writer and its ``(generation, count)`` never
repeats, so a change made after the SPM's last read of that sector is still visible at its
next read: nobody can write an older value back. The host's box write finished before its
ring write started, so a box read after seeing the ring holds the requests (and requests
in the ring sector's own head slots arrive with it; see ``inbox.py`` for when the box needs
no read). At start the SPM reads the ring sectors *before* it reads any box, so a ring it
did not see yet is one it will see changed.

Three cadences:

- **live sweep**: the ring sectors of the hosts the lease sees alive (``live_hosts``, a
  callable the cluster agent passes in), as the few contiguous ranges covering them, every
  ``live_poll_interval_s`` (0.2 s), slowed down so this costs at most
  ``live_sweep_bytes_per_s`` (and never slower than the sweep below).
- **sweep** (the safety net): every other ring sector (all ``max_hosts`` of them when no live
  set is known) every ``max(poll_interval_s, ring_bytes / ring_sweep_bytes_per_s)``: hosts
  the lease does not know yet, dead hosts' leftovers, a wrong live set.
- **hot** (the fast path): hosts that sent a new request within ``hot_window_s`` have their
  ring sectors read every ``poll_interval_s`` (adjacent ones in one read), slowed down so
  this costs at most ``hot_read_bytes_per_s``.

Every ring sector is read by the live sweep or by the sweep, so ``live_hosts`` decides only
*when* a sector is read, never *whether*: a wrong, failing or odd live set costs latency,
never a request (a failing callable falls back to the full sweep, logged once).

**The peeker** (``peek.py``): on O_DIRECT storage and the real clock, a long-lived thread
does the live sweep and the sweep on the cadences above and wakes the server only when a
ring sector changed; the server then reads those sectors itself at once. The server's own
live sweep and sweep then run every ``max(PEEK_FALLBACK_S, sweep)``: every ring sector is
still read *by the server* at that pace, so the peeker decides only when a sector is read
early, never whether it is read: a dead, hung or wrong peeker costs latency, never a
request (the same argument as the live set's). Requests are taken only from the server's
own reads.

The pure parts (cadence math, the tracker of what was seen and who is active) have no I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Collection

from autoextend import logs
from autoextend.clock import Clock, MonotonicClock
from autoextend.directio import DirectStorage
from autoextend.errors import AutoextendError
from autoextend.sectors import SectorStorage
from autoextend.spm.config import MailboxSettings
from autoextend.spm.counters import ServerCounters
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout, contiguous_runs
from autoextend.spm.peek import Peeker, PeekGroup, PeekSource, PeekStats
from autoextend.spm.wire import Ring, decode_ring

log = logs.get_logger("spm.watch")

MAX_READ_BYTES = 1 << 20  # one I/O reads at most this much
# The live sweep reads a gap of up to this many bytes between two live hosts rather than
# issuing one more I/O (one 4 KiB read costs about what a 512 B read costs).
MERGE_GAP_BYTES = 4096
# How often the live set is asked for (the lease changes a host's state in seconds).
LIVE_REFRESH_S = 1.0
#: With a peeker running, the server's own reads of every ring sector come at least this
#: often (the latency bound if the peeker stops; the safety argument does not need it).
PEEK_FALLBACK_S = 10.0
#: The slow full scan of the request boxes reads a batch about this often (``scan_batch``).
FULL_SCAN_BATCH_S = 10.0
_EPSILON = 1e-6  # what is due this close to now is due now
#: The server sleeps until this much before what is due (clocks and float sums may land a
#: hair short of it; less than ``_EPSILON``, so what it wakes for is due).
WAKE_EARLY_S = 1e-7

LiveHosts = Callable[[], Collection[int]]

RingKey = tuple[int, int] | bytes  # (generation, count), or a digest of a corrupt sector
NEVER_RUNG: RingKey = (0, 0)


def cadence(read_bytes: int, bytes_per_s: int, poll_interval_s: float) -> float:
    """Seconds between reads of ``read_bytes`` so they cost at most ``bytes_per_s``, but never
    more often than every poll (pure)."""
    return max(poll_interval_s, read_bytes / bytes_per_s)


def live_cover(live: Collection[int], max_hosts: int, sector_size: int) -> list[int]:
    """The ring sectors the live sweep reads: every live host id in 1..max_hosts, plus the
    gaps of at most ``MERGE_GAP_BYTES`` between them, so they are read in a few contiguous
    ranges (pure). Every range of hosts left out is longer than that gap."""
    hosts = sorted({h for h in live if 1 <= h <= max_hosts})
    max_gap = MERGE_GAP_BYTES // sector_size
    cover: list[int] = []
    for host in hosts:
        if cover and host - cover[-1] - 1 <= max_gap:
            cover.extend(range(cover[-1] + 1, host))
        cover.append(host)
    return cover


def live_interval(cover_count: int, sector_size: int, settings: MailboxSettings,
                  sweep_interval_s: float) -> float:
    """Seconds between live sweeps of ``cover_count`` ring sectors: at most
    ``live_sweep_bytes_per_s``, never more often than every ``live_poll_interval_s`` (nor
    every poll), never less often than the sweep (pure)."""
    return min(sweep_interval_s, cadence(cover_count * sector_size,
                                         settings.live_sweep_bytes_per_s,
                                         max(settings.poll_interval_s,
                                             settings.live_poll_interval_s)))


def idle_ring_read_rate(live: Collection[int], max_hosts: int, sector_size: int,
                        settings: MailboxSettings, peeking: bool = False) -> float:
    """Bytes/s the SPM reads from the ring area while no host is hot: the live sweep of the
    live cover plus the sweep of every other ring sector, plus, with the ring peeker
    (``peeking``), the server's own reads of every ring sector every
    ``max(PEEK_FALLBACK_S, sweep)`` (pure; the I/O budget)."""
    sweep_s = cadence(max_hosts * sector_size, settings.ring_sweep_bytes_per_s,
                      settings.poll_interval_s)
    covered = len(live_cover(live, max_hosts, sector_size))
    rate = (max_hosts - covered) * sector_size / sweep_s
    if covered:
        rate += covered * sector_size / live_interval(covered, sector_size, settings, sweep_s)
    if peeking:
        rate += max_hosts * sector_size / max(PEEK_FALLBACK_S, sweep_s)
    return rate


def scan_batch(max_hosts: int, full_scan_interval_s: float) -> int:
    """Request boxes the server's slow full scan reads at once: about
    ``FULL_SCAN_BATCH_S`` worth of the scan, at least one (pure). Every box is still read once
    per ``full_scan_interval_s`` (give or take one batch), in a read every few seconds rather
    than one host's ring and box every poll."""
    return max(1, min(max_hosts, int(max_hosts * FULL_SCAN_BATCH_S / full_scan_interval_s)))


def peek_source(storage: SectorStorage, clock: Clock) -> PeekSource | None:
    """The peeker's reader for ``storage``: only storage that opens readers of its own
    (O_DIRECT) on the real clock (a thread cannot follow an injected clock)."""
    if isinstance(storage, DirectStorage) and isinstance(clock, MonotonicClock):
        return storage.open_reader
    return None


def ring_key(data: bytes, host_id: int) -> tuple[RingKey, Ring | CorruptSector]:
    """What identifies the state of a ring sector: ``(generation, count)`` when it is valid,
    else a digest of its bytes (a changed corrupt sector still counts as a change: the box
    has its own checks); and the decoded sector or why it is corrupt. Pure."""
    try:
        ring = decode_ring(data, host_id)
    except CorruptSector as err:
        return hashlib.blake2b(data, digest_size=16).digest(), err
    return (ring.generation, ring.count), ring


class RingTracker:
    """What the SPM last saw in every ring sector, and which hosts are active (pure)."""

    def __init__(self, hot_window_s: float) -> None:
        self.hot_window_s = hot_window_s
        self._seen: dict[int, RingKey] = {}
        self._active: dict[int, float] = {}  # host -> when it last sent a new request

    def update(self, host_id: int, key: RingKey) -> bool:
        """Record ``key`` for ``host_id``; True when it differs from what was seen before."""
        changed = self._seen.get(host_id, NEVER_RUNG) != key
        self._seen[host_id] = key
        return changed

    def mark_active(self, host_id: int, now: float) -> None:
        self._active[host_id] = now

    def hot(self, now: float) -> list[int]:
        """Hosts that sent a new request within the hot window, sorted (expired ones are
        forgotten)."""
        limit = now - self.hot_window_s
        for host_id in [h for h, t in self._active.items() if t < limit]:
            del self._active[host_id]
        return sorted(self._active)


class RingWatch:
    """Reads ring sectors on the three cadences and reports the hosts whose ring changed."""

    def __init__(
        self,
        storage: SectorStorage,
        layout: MailboxLayout,
        settings: MailboxSettings,
        counters: ServerCounters,
        live_hosts: LiveHosts | None = None,
        repeats: logs.Repeats | None = None,
        peek: PeekSource | None = None,
    ) -> None:
        self._storage = storage
        self._layout = layout
        self._settings = settings
        self._counters = counters
        self._live_hosts = live_hosts
        self.tracker = RingTracker(settings.hot_window_s)
        self.sweep_interval_s = cadence(
            layout.ring_bytes, settings.ring_sweep_bytes_per_s, settings.poll_interval_s
        )
        self._all = list(range(1, layout.max_hosts + 1))
        self._cover: list[int] = []  # read by the live sweep
        self._rest: list[int] = self._all  # read by the sweep
        self.live_interval_s = self.sweep_interval_s
        self._live_failing = False
        # read errors retried every poll: once, then a count (the server's, when it has one)
        self._repeats = repeats or logs.Repeats(log)
        self._next_live_refresh = -1e18
        self._next_sweep = 0.0
        self._next_live = 0.0
        self._last_hot = -1e18
        self._raw: dict[int, bytes] = {}  # the bytes last read of each ring sector
        self._runs: dict[tuple[int, int], bytes] = {}  # ... and of each run read together
        self._peek = peek
        self._peeker: Peeker | None = None
        self._nudged: set[int] = set()  # hosts the peeker saw change, read at the next poll
        self._nudge: Callable[[], None] = lambda: None
        # the server's own cadences (the sweep's and the live sweep's, slower with a peeker)
        self._loop_sweep_s = self.sweep_interval_s
        self._loop_live_s = self.sweep_interval_s

    @property
    def max_wait_s(self) -> float:
        """The longest the server may sleep: until its own next sweep."""
        return max(self._settings.poll_interval_s, self._loop_sweep_s)

    @property
    def peek_stats(self) -> PeekStats | None:
        """The running peeker's counts (None: no peeker)."""
        return None if self._peeker is None else self._peeker.stats

    @property
    def live_cover(self) -> list[int]:
        """The ring sectors the live sweep reads now (empty: the sweep reads them all)."""
        return list(self._cover)

    async def start(self, now: float, nudge: Callable[[], None] | None = None) -> None:
        """Read every ring sector (nothing is reported: the caller reads every box next),
        then start the peeker if there is one (``nudge`` wakes the server when it saw a
        change; it is called on the event loop).

        Raises:
            StorageError: the ring area could not be read.
        """
        await self._read(self._all, raise_errors=True, counting=False)
        if self._peek is not None:
            self._nudge = nudge or self._nudge
            loop = asyncio.get_running_loop()
            self._peeker = Peeker(
                self._peek, self._layout.ring_offset, self._layout.sector_size,
                lambda hosts: loop.call_soon_threadsafe(self._peeked, hosts),
                lambda reason: loop.call_soon_threadsafe(self._peek_failed, reason),
                self._raw)
            self._loop_sweep_s = max(PEEK_FALLBACK_S, self.sweep_interval_s)
        self._refresh_live(now)
        self._configure_peeker()
        self._next_sweep = now + self._loop_sweep_s
        self._next_live = now + self._loop_live_s
        if self._peeker is not None:
            self._peeker.start()

    def stop(self) -> None:
        """Stop the peeker (the server stopped)."""
        if self._peeker is not None:
            self._peeker.stop()
            self._peeker = None

    def _peeked(self, hosts: list[int]) -> None:
        """On the loop: the peeker saw these ring sectors change."""
        if self._peeker is None:
            return
        self._counters.peek_nudges += 1
        self._nudged.update(hosts)
        self._nudge()

    def _peek_failed(self, reason: str) -> None:
        """On the loop: the peeker ended; the server reads on its own cadences again."""
        if self._peeker is None:
            return
        self._peeker = None
        self._counters.peek_errors += 1
        self._loop_sweep_s = self.sweep_interval_s
        self._loop_live_s = self.live_interval_s
        self._next_sweep = self._next_live = 0.0  # everything is read at the next poll
        log.warning("ring peeker stopped, the server reads on its own cadence", error=reason)
        self._nudge()

    def _configure_peeker(self) -> None:
        if self._peeker is None:
            return
        groups = [PeekGroup(tuple(self._rest), self.sweep_interval_s)]
        if self._cover:
            groups.append(PeekGroup(tuple(self._cover), self.live_interval_s))
        self._peeker.configure(groups)

    def mark_active(self, host_id: int, now: float) -> None:
        self.tracker.mark_active(host_id, now)

    async def poll(self, now: float) -> dict[int, Ring | None]:
        """Read what is due (the sweep, the live sweep, the active hosts' ring sectors; what
        is due at once in one pass) and return the hosts whose ring sector changed, with the
        sector (None: it failed its checks). I/O errors are logged and counted; the sectors
        not read keep their old state, so their changes show up at the next read (a failed
        sweep or live sweep is tried again at the next poll)."""
        self._refresh_live(now)
        hosts: set[int] = set(self._nudged)
        self._nudged.clear()
        sweep = now >= self._next_sweep - _EPSILON
        live = bool(self._cover) and now >= self._next_live - _EPSILON
        if sweep:
            self._counters.sweeps += 1
            hosts.update(self._rest)
        if live:
            self._counters.live_polls += 1
            hosts.update(self._cover)
        hot = self.tracker.hot(now)
        if hot and not hosts.issuperset(hot):
            interval = cadence(len(hot) * self._layout.sector_size,
                               self._settings.hot_read_bytes_per_s,
                               self._settings.poll_interval_s)
            if now - self._last_hot >= interval - _EPSILON:
                self._last_hot = now
                self._counters.hot_polls += 1
                hosts.update(hot)
        elif hot:
            self._last_hot = now  # every hot host is read anyway
        # A sweep with nothing to read (every sector live) is still done: rescheduled, else
        # it stays due and the server wakes at every poll for it.
        changed, failed = await self._read(sorted(hosts)) if hosts else ({}, False)
        retry = self._settings.poll_interval_s
        if sweep:
            self._next_sweep = now + (retry if failed else self._loop_sweep_s)
        if live:
            self._next_live = now + (retry if failed else self._loop_live_s)
        return changed

    def next_due(self, now: float) -> float:
        """When :meth:`poll` has something to read next (the sweep, the live sweep, the hot
        hosts' next read, the next ask for the live set): the server sleeps until then
        instead of waking every ``poll_interval_s`` to find nothing due."""
        if self._nudged:
            return now
        due = self._next_sweep
        if self._cover:
            due = min(due, self._next_live)
        if self._live_hosts is not None:
            due = min(due, self._next_live_refresh)
        hot = self.tracker.hot(now)
        if hot:
            interval = cadence(len(hot) * self._layout.sector_size,
                               self._settings.hot_read_bytes_per_s,
                               self._settings.poll_interval_s)
            due = min(due, self._last_hot + interval)
        return due

    def _refresh_live(self, now: float) -> None:
        """Ask for the live set (at most every ``LIVE_REFRESH_S``) and split the ring
        sectors between the live sweep and the sweep."""
        if self._live_hosts is None or now < self._next_live_refresh:
            return
        self._next_live_refresh = now + LIVE_REFRESH_S
        live = self._ask_live()
        layout = self._layout
        cover = [] if live is None else live_cover(live, layout.max_hosts, layout.sector_size)
        if cover == self._cover:
            return
        covered = set(cover)
        self._cover = cover
        self._rest = [h for h in self._all if h not in covered]
        old_interval = self._loop_live_s
        self.live_interval_s = live_interval(len(cover), layout.sector_size, self._settings,
                                             self.sweep_interval_s)
        self._loop_live_s = self._loop_sweep_s if self._peeker else self.live_interval_s
        # A sector leaving the live sweep is read by the next sweep, at most a sweep from now.
        self._next_live = min(self._next_live,
                              self._next_live - old_interval + self._loop_live_s)
        self._configure_peeker()
        log.info("live sweep", hosts=len(covered), interval_s=round(self.live_interval_s, 3))

    def _ask_live(self) -> frozenset[int] | None:
        """The live host ids, or None when the callable failed or returned something odd
        (the full sweep then covers everything; logged once until it works again)."""
        assert self._live_hosts is not None
        try:
            got = frozenset(self._live_hosts())
            odd = [h for h in got if not isinstance(h, int) or isinstance(h, bool)]
            if odd:
                raise TypeError(f"not host ids: {sorted(map(repr, odd))[:3]}")
        except Exception as err:  # a bug in the callable must not stop the server
            self._counters.live_hosts_errors += 1
            if not self._live_failing:
                self._live_failing = True
                log.warning("live hosts unavailable, sweeping every host",
                            error=f"{type(err).__name__}: {err}")
            return None
        if self._live_failing:
            self._live_failing = False
            log.info("live hosts available again", hosts=len(got))
        return got

    async def _read(
        self, hosts: list[int], *, raise_errors: bool = False, counting: bool = True
    ) -> tuple[dict[int, Ring | None], bool]:
        """Read the ring sectors of ``hosts`` (adjacent ones together): the hosts whose
        sector changed, and whether some read failed."""
        layout = self._layout
        ss = layout.sector_size
        changed: dict[int, Ring | None] = {}
        failed = False
        for first, count in contiguous_runs(hosts, max(1, MAX_READ_BYTES // ss)):
            try:
                data = await self._storage.read(layout.ring_offset(first), count * ss)
            except AutoextendError as err:
                if raise_errors:
                    raise
                failed = True
                self._counters.io_errors += 1
                self._repeats.warning("ring sector read failed", first_host=first,
                                      hosts=count, error=str(err))
                continue
            self._repeats.clear("ring sector read failed")
            if self._runs.get((first, count)) == data:
                continue  # the same bytes as the last read of this run: nothing changed
            self._runs[(first, count)] = data
            for n in range(count):
                host_id = first + n
                raw = data[n * ss : (n + 1) * ss]
                if self._raw.get(host_id) == raw:
                    continue  # the same bytes as last read: nothing to decode
                self._raw[host_id] = raw
                key, ring = ring_key(raw, host_id)
                if self.tracker.update(host_id, key) and counting:
                    self._counters.rings += 1
                    if isinstance(ring, CorruptSector):
                        changed[host_id] = None
                        self._counters.corrupt_rings += 1
                        self._counters.corrupt_sectors += 1
                        log.warning("corrupt ring sector (reading the box anyway)",
                                    host_id=host_id, error=str(ring))
                    else:
                        changed[host_id] = ring
        return changed, failed
