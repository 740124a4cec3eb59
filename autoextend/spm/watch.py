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

Two cadences:

- **sweep** (the cold path): all ``max_hosts`` ring sectors in one sequential read (1 MiB
  per I/O at most), every ``max(poll_interval_s, ring_bytes / ring_sweep_bytes_per_s)``.
  This is the whole idle cost.
- **hot** (the fast path): hosts that sent a new request within ``hot_window_s`` have their
  ring sectors read every ``poll_interval_s`` (adjacent ones in one read), slowed down so
  this costs at most ``hot_read_bytes_per_s``.

The pure parts (cadence math, the tracker of what was seen and who is active) have no I/O.
"""

from __future__ import annotations

import hashlib

from autoextend import logs
from autoextend.directio import SectorStorage
from autoextend.errors import AutoextendError
from autoextend.spm.config import MailboxSettings
from autoextend.spm.counters import ServerCounters
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout, contiguous_runs
from autoextend.spm.wire import Ring, decode_ring

log = logs.get_logger("spm.watch")

MAX_READ_BYTES = 1 << 20  # one I/O reads at most this much
_EPSILON = 1e-9

RingKey = tuple[int, int] | bytes  # (generation, count), or a digest of a corrupt sector
NEVER_RUNG: RingKey = (0, 0)


def cadence(read_bytes: int, bytes_per_s: int, poll_interval_s: float) -> float:
    """Seconds between reads of ``read_bytes`` so they cost at most ``bytes_per_s``, but never
    more often than every poll (pure)."""
    return max(poll_interval_s, read_bytes / bytes_per_s)


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
    """Reads ring sectors on the two cadences and reports the hosts whose ring changed."""

    def __init__(
        self,
        storage: SectorStorage,
        layout: MailboxLayout,
        settings: MailboxSettings,
        counters: ServerCounters,
    ) -> None:
        self._storage = storage
        self._layout = layout
        self._settings = settings
        self._counters = counters
        self.tracker = RingTracker(settings.hot_window_s)
        self.sweep_interval_s = cadence(
            layout.ring_bytes, settings.ring_sweep_bytes_per_s, settings.poll_interval_s
        )
        self._next_sweep = 0.0
        self._last_hot = -1e18

    async def start(self, now: float) -> None:
        """Read every ring sector (nothing is reported: the caller reads every box next).

        Raises:
            StorageError: the ring area could not be read.
        """
        hosts = list(range(1, self._layout.max_hosts + 1))
        await self._read(hosts, raise_errors=True, counting=False)
        self._next_sweep = now + self.sweep_interval_s

    def mark_active(self, host_id: int, now: float) -> None:
        self.tracker.mark_active(host_id, now)

    async def poll(self, now: float) -> dict[int, Ring | None]:
        """Read what is due (a sweep, or the active hosts' ring sectors) and return the hosts
        whose ring sector changed, with the sector (None: it failed its checks). I/O errors
        are logged and counted; the sectors not read keep their old state, so their changes
        show up at the next read."""
        if now >= self._next_sweep - _EPSILON:
            self._counters.sweeps += 1
            changed, failed = await self._read(list(range(1, self._layout.max_hosts + 1)))
            # A failed sweep is tried again at the next poll.
            self._next_sweep = now + (
                self._settings.poll_interval_s if failed else self.sweep_interval_s
            )
            self._last_hot = now
            return changed
        hot = self.tracker.hot(now)
        if not hot:
            return {}
        interval = cadence(len(hot) * self._layout.sector_size,
                           self._settings.hot_read_bytes_per_s, self._settings.poll_interval_s)
        if now - self._last_hot < interval - _EPSILON:
            return {}
        self._last_hot = now
        self._counters.hot_polls += 1
        return (await self._read(hot))[0]

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
                log.warning("ring sector read failed", first_host=first, hosts=count,
                            error=str(err))
                continue
            for n in range(count):
                host_id = first + n
                key, ring = ring_key(data[n * ss : (n + 1) * ss], host_id)
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
