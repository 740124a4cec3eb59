"""The SPM's reply boxes: what it has answered every host, and the writes that carry it.

:class:`ReplyBoxes` keeps, per host, an image of the reply box (a reply per slot), the copy
known to be on disk, and a version per reply sector (bumped by every reply put, recorded as
written when a write holding it succeeds). :meth:`ReplyBoxes.load` reads every reply box at
start, so a request whose reply is already on disk is not executed again after a failover.

One write at a time per host (the host's lock below): it covers every reply sector of that
host with unwritten replies (one I/O for the range), so replies that queue behind a write are
folded into the next one. ``authority.check()`` runs before every write; a failed write puts
back what is on disk and the requests are served again.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from autoextend import logs
from autoextend.errors import AutoextendError, NotSpmError
from autoextend.sectors import SectorStorage
from autoextend.spm.counters import ServerCounters
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import SLOTS_PER_HOST, MailboxLayout, contiguous_runs
from autoextend.spm.wire import Kind, Reply, Status, decode_sector, encode_sector
from autoextend.volumes import SpmAuthority

log = logs.get_logger("spm.server")

MAX_READ_BYTES = 1 << 20  # adjacent boxes are read together, up to this much per I/O


class ReplyBoxes:
    """Every host's reply box as this SPM term sees it, and their writes."""

    def __init__(
        self, storage: SectorStorage, layout: MailboxLayout, authority: SpmAuthority,
        counters: ServerCounters, repeats: logs.Repeats, *, epoch: int,
        write_failed: Callable[[int], None],
    ) -> None:
        """``write_failed(host)`` is called when a write of ``host``'s replies failed (its
        requests must be read and served again)."""
        self._storage = storage
        self._layout = layout
        self._authority = authority
        self._counters = counters
        self._repeats = repeats
        self._epoch = epoch & 0xFFFFFFFF
        self._write_failed = write_failed
        self._replies: dict[int, list[Reply | None]] = {}
        self._on_disk: dict[tuple[int, int], list[Reply | None]] = {}
        self._version: dict[tuple[int, int], int] = {}
        self._written: dict[tuple[int, int], int] = {}
        # One write per host at a time: a write covers the range of the host's unwritten
        # reply sectors, and versions are recorded as written in the order writes finish.
        self._host_locks: dict[int, anyio.Lock] = {}

    def answered(self, host: int, slot: int) -> Reply | None:
        """The reply this term holds for the slot (written, or being written)."""
        return self._replies[host][slot]

    async def load(self) -> None:
        """Read every host's reply box (corrupt sectors count as unanswered; they are
        rewritten with the next reply to that host). Raises StorageError."""
        layout = self._layout
        ss = layout.sector_size
        size = layout.reply_box_bytes
        per_read = max(1, MAX_READ_BYTES // size)
        for first, count in contiguous_runs(list(range(1, layout.max_hosts + 1)), per_read):
            data = await self._storage.read(layout.reply_offset(first), count * size)
            for n in range(count):
                host = first + n
                image: list[Reply | None] = [None] * SLOTS_PER_HOST
                box = data[n * size : (n + 1) * size]
                for index in range(layout.reply_sectors):
                    slots = layout.reply_sector_slots(index)
                    try:
                        sector = decode_sector(box[index * ss : (index + 1) * ss], Kind.REPLY,
                                               index, host, len(slots))
                    except CorruptSector as err:
                        self._counters.corrupt_sectors += 1
                        log.warning("corrupt reply sector (will be rewritten)", error=str(err))
                        continue
                    for slot, reply in zip(slots, sector.slots, strict=True):
                        image[slot] = reply if isinstance(reply, Reply) else None
                self._replies[host] = image
                for index in range(layout.reply_sectors):
                    self._on_disk[(host, index)] = [image[j] for j in
                                                    layout.reply_sector_slots(index)]

    async def put(self, host: int, slot: int, reply: Reply) -> bool:
        """Put the reply in the host's image and write it (or wait for the write that
        carries it). False when the write failed: the request will be served again.
        Raises NotSpmError (checked before the write)."""
        skey = (host, self._layout.reply_slot_sector(slot))
        self._replies[host][slot] = reply
        version = self._version[skey] = self._version.get(skey, 0) + 1
        async with self._host_locks.setdefault(host, anyio.Lock()):
            if self._replies[host][slot] is not reply:
                return False  # a failed write of this sector took it back
            if self._written.get(skey, 0) < version and not await self._write(host):
                return False
        self._count(reply)
        return True

    async def _write(self, host: int) -> bool:
        """Write the range of ``host``'s reply sectors that hold unwritten replies (called
        with the host's lock held)."""
        layout = self._layout
        dirty = [i for i in range(layout.reply_sectors)
                 if self._version.get((host, i), 0) > self._written.get((host, i), 0)]
        span = range(min(dirty), max(dirty) + 1)
        versions = {i: self._version.get((host, i), 0) for i in span}
        images = {i: [self._replies[host][j] for j in layout.reply_sector_slots(i)]
                  for i in span}
        data = b"".join(encode_sector(Kind.REPLY, layout.sector_size, i, host, self._epoch,
                                      images[i]) for i in span)
        try:
            self._authority.check()
            await self._storage.write(
                layout.reply_offset(host) + span.start * layout.sector_size, data
            )
        except NotSpmError:
            raise
        except AutoextendError as err:
            # Forget what did not reach the disk; the requests are served again.
            self._counters.io_errors += 1
            for i in span:
                for j, old in zip(layout.reply_sector_slots(i), self._on_disk[(host, i)],
                                  strict=True):
                    self._replies[host][j] = old
            self._write_failed(host)
            self._repeats.warning("reply write failed, will serve again", host_id=host,
                                  error=str(err))
            return False
        self._repeats.clear("reply write failed, will serve again")
        for i in span:
            self._written[(host, i)] = versions[i]
            self._on_disk[(host, i)] = images[i]
        return True

    def _count(self, reply: Reply) -> None:
        self._counters.replied += 1
        if reply.status is Status.OK:
            self._counters.ok += 1
        elif reply.status is Status.FAILED:
            self._counters.failed += 1
        else:
            self._counters.rejected += 1
