"""Delta lease on one host id slot (Chockler-Malkhi light-weight lease, as in sanlock).

- acquire: read our slot; if it is free or carries our host name, claim it at once; else wait
  ``delta_held_wait`` (8T+W) and re-read: a changed slot means a live owner (HostIdBusy).
  Claim = write (generation+1, timestamp, name), wait 2T, read back: any difference means a
  racing host won (HostIdBusy).
- renew: one read of the whole delta area (our slot checked, every peer observed) and one
  write of our slot. The lease stays valid until 8T after the *start* of the last renewal
  that completed while still valid (``expiry``).
- release: write timestamp 0.
"""

from __future__ import annotations

import random
from dataclasses import replace

from autoextend.clock import Clock
from autoextend.lease.errors import HostIdBusy, HostIdLost, NotFormatted, RecordError
from autoextend.lease.format import (
    MAX_GENERATION,
    DeltaRecord,
    pack_delta,
    sectors,
    unpack_delta,
)
from autoextend.lease.layout import LeaseLayout
from autoextend.lease.liveness import HostMonitor
from autoextend.lease.priority import DEFAULT_PRIORITY, Priority
from autoextend.lease.timeouts import LeaseTimeouts
from autoextend.logs import get_logger
from autoextend.sectors import SectorStorage


def _us(seconds: float) -> int:
    return max(1, int(seconds * 1_000_000))


class DeltaLease:
    def __init__(
        self,
        storage: SectorStorage,
        layout: LeaseLayout,
        host_id: int,
        host_name: str,
        timeouts: LeaseTimeouts,
        clock: Clock,
        monitor: HostMonitor,
        rng: random.Random | None = None,
    ) -> None:
        layout.check_host(host_id)
        self.storage = storage
        self.layout = layout
        self.host_id = host_id
        self.host_name = host_name
        self.timeouts = timeouts
        self.clock = clock
        self.monitor = monitor
        self.rng = rng or random.Random()
        # Published in our record's extension (format.py) at the claim and every renewal.
        self.spm_priority: Priority = DEFAULT_PRIORITY
        self.record: DeltaRecord | None = None  # what we last wrote while holding
        self.expiry = 0.0                        # our clock; lease valid while now < expiry
        self.last_renewal = 0.0                  # start of the last successful renewal
        self.log = get_logger("lease", host_id=host_id)

    @property
    def held(self) -> bool:
        return self.record is not None and self.clock.now() < self.expiry

    def _offset(self) -> int:
        return self.layout.delta_offset(self.host_id)

    async def _read_own(self) -> tuple[bytes, float, float]:
        issued = self.clock.now()
        raw = await self.storage.read(self._offset(), self.layout.sector_size)
        return raw, issued, self.clock.now()

    async def acquire(self) -> None:
        """Acquire our host id. Raises HostIdBusy, NotFormatted, StorageError."""
        t = self.timeouts
        raw, issued, done = await self._read_own()
        self.monitor.observe(self.host_id, raw, self._offset(), issued, done)
        if not any(raw):
            raise NotFormatted(self.storage.path, "host id slot is all zeros")
        old: DeltaRecord | None
        try:
            old = unpack_delta(raw, self._offset(), self.host_id)
        except RecordError as err:
            self.log.warning("host record unreadable", error=str(err))
            old = None
        if old is not None and old.sector_size != self.layout.sector_size:
            raise NotFormatted(
                self.storage.path,
                f"area formatted for {old.sector_size}-byte sectors",
            )
        if old is None or not (old.free or old.host_name == self.host_name):
            owner = old.host_name if old else "?"
            wait = t.delta_held_wait
            if old is not None:
                wait = max(wait, 8 * old.io_timeout_ms / 1000 + t.watchdog_fire)
            self.log.info("waiting for the host id", owner=owner, duration_s=wait)
            await self.clock.sleep(wait)
            again, issued, done = await self._read_own()
            self.monitor.observe(self.host_id, again, self._offset(), issued, done)
            if again != raw:
                raise HostIdBusy(self.host_id, owner, "record changed while waiting: owner is live")
        generation = old.generation + 1 if old is not None else self.rng.getrandbits(40) + 1
        if generation > MAX_GENERATION:  # a hostile record at the limit: any new value will do
            generation = self.rng.getrandbits(40) + 1
        start = self.clock.now()
        claim = DeltaRecord(
            host_id=self.host_id, generation=generation, timestamp_us=_us(start),
            host_name=self.host_name, io_timeout_ms=int(t.io_timeout * 1000),
            watchdog_ms=int(t.watchdog_fire * 1000), sector_size=self.layout.sector_size,
            max_hosts=self.layout.max_hosts, spm_priority=self.spm_priority,
        )
        data = pack_delta(claim, self.layout.sector_size)
        await self.storage.write(self._offset(), data)
        await self.clock.sleep(t.delta_verify_wait)
        back, issued, done = await self._read_own()
        self.monitor.observe(self.host_id, back, self._offset(), issued, done)
        if back != data:
            raise HostIdBusy(self.host_id, "?", "a racing host overwrote our claim")
        self.record = claim
        self.last_renewal = start
        self.expiry = start + t.lease_expiry
        self.log.info("host id acquired", generation=generation)

    async def renew(self) -> None:
        """One area read and one write. Raises HostIdLost, StorageError."""
        if self.record is None:
            raise HostIdLost(self.host_id, "not acquired")
        start = self.clock.now()
        if start >= self.expiry:
            self.record = None
            raise HostIdLost(self.host_id, "not renewed within the lease expiry")
        area = await self.storage.read(self.layout.delta_start, self.layout.delta_length)
        done = self.clock.now()
        for index, raw in enumerate(sectors(area, self.layout.sector_size)):
            host = index + 1
            self.monitor.observe(host, raw, self.layout.delta_offset(host), start, done)
        self.monitor.area_seen = done
        mine = self.monitor.record(self.host_id)
        if mine is not None and (
            mine.generation != self.record.generation or mine.host_name != self.host_name
        ):
            self.record = None
            raise HostIdLost(self.host_id, f"slot now held by {mine.host_name!r}")
        update = replace(self.record, timestamp_us=_us(self.clock.now()),
                         spm_priority=self.spm_priority)
        await self.storage.write(self._offset(), pack_delta(update, self.layout.sector_size))
        if self.clock.now() >= self.expiry:
            self.record = None
            raise HostIdLost(self.host_id, "renewal completed after the lease expiry")
        self.record = update
        self.last_renewal = start
        self.expiry = start + self.timeouts.lease_expiry

    async def release(self) -> None:
        """Free the slot (timestamp 0). Only call once nothing depends on the lease."""
        if self.record is None:
            return
        free = replace(self.record, timestamp_us=0)
        self.record = None
        self.expiry = 0.0
        await self.storage.write(self._offset(), pack_delta(free, self.layout.sector_size))
        self.log.info("host id released")
