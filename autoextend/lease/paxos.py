"""The SPM resource lease: Disk Paxos ballots (``ballot.py``) plus the leader record, on I/O.

``acquire`` loops until this host owns a new lease version (lver):

1. Read the whole paxos area (leader + every dblock; one I/O).
2. If some dblock is at a higher lver than a readable leader (a commit whose leader write was
   lost, or a leader that is unreadable, or one overwritten by a late release write of an
   older version), re-run that instance: Paxos returns the value already decided, or lets us
   decide it, and the leader is rewritten. But if that instance's holder has already marked
   its block RELEASED, the instance is over: run the next one (``ballot.released_at``), so
   no version is ever handed out twice.
3. Else the next instance (leader.lver + 1) may be run only if the lease is free: no owner,
   RELEASED on the leader or on the owner's dblock for that lver, owned by us (an older
   incarnation, or a value someone adopted for us), or the owner's host id lease is gone
   (slot free, a new generation, or DEAD by the 8T+W rule). Otherwise poll.
4. Ballot (3 writes of our dblock + reads, see ballot.py), then write the leader with the
   decided value. The decided owner may be another host; then we keep waiting.

A free acquire is 3 area reads + 3 sector writes. Aborts back off randomly (0..min(1 s, T)).

Unreadable dblocks (bad checksum, or a checksum-valid block with impossible values): a ballot
aborts on one, except on the block of another host that is provably gone (its host id slot
FREE or DEAD, from a read issued for this ballot) whose same unreadable bytes have been seen
for at least host_dead (8T+W). Such a block is treated as the block of a host that never ran
(README, "Unreadable dblocks" argues why that keeps mutual exclusion). Ballot writes are
fenced: none is issued once our own host id lease may have expired, and the watchdog is armed
with that expiry while a ballot runs, so a frozen host cannot resume a ballot later.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from autoextend.clock import Clock
from autoextend.lease.ballot import (
    BlockView,
    Value,
    abort_reason,
    choose_value,
    highest_lver,
    next_ballot,
    phase1_block,
    phase2_block,
    released_at,
)
from autoextend.lease.errors import RecordError
from autoextend.lease.format import (
    FLAG_RELEASED,
    MAX_BALLOT,
    MAX_LVER,
    Dblock,
    LeaderRecord,
    pack_dblock,
    pack_leader,
    sectors,
    unpack_dblock,
    unpack_leader,
)
from autoextend.lease.layout import PAXOS_FIRST_DBLOCK_SECTOR, LeaseLayout
from autoextend.lease.timeouts import LeaseTimeouts
from autoextend.logs import Repeats, get_logger
from autoextend.sectors import IoTimeout, SectorStorage, StorageError, UnalignedIoError


@dataclass
class PaxosArea:
    leader: LeaderRecord | None            # None: unreadable
    blocks: dict[int, Dblock | None]       # host_id -> block (None: unreadable)
    errors: list[RecordError] = field(default_factory=list)
    bad: dict[int, bytes] = field(default_factory=dict)  # host_id -> raw unreadable dblock


@dataclass
class PaxosStats:
    ballots: int = 0
    aborts: int = 0
    commits: int = 0
    record_errors: int = 0
    io_errors: int = 0
    skipped_dblocks: int = 0   # unreadable dblocks of gone hosts a ballot went past
    fenced_ballots: int = 0    # ballots stopped because our host id lease may have expired
    sector_reads: int = 0      # area reads redone sector by sector after an I/O error


class BallotAborted(Exception):
    """Internal: a ballot saw a higher ballot/lver or an unreadable block."""


# (owner_id, owner_generation) -> True if the owner's host id lease is provably gone.
OwnerGone = Callable[[int, int], Awaitable[bool]]
# lver -> seconds this host still waits before it starts a ballot for that instance (0: go);
# the SPM priority (priority.py). It only delays the start of a ballot, never changes one.
Defer = Callable[[int], Awaitable[float]]


class BallotGuard(Protocol):
    """What a ballot needs from the host id lease (LeaseService provides it)."""

    def valid_until(self) -> float:
        """Clock time until which our host id lease is valid (no ballot write after it)."""
        ...

    def arm(self, expiry: float | None) -> None:
        """Arm the watchdog with ``expiry`` while a ballot runs (None: the ballot ended)."""
        ...

    async def gone(self, hosts: set[int]) -> set[int]:
        """Those of ``hosts`` whose host id slot is FREE or DEAD, from a read issued now."""
        ...


def skippable(
    bad_since: dict[int, tuple[bytes, float]], area_bad: dict[int, bytes], own: int,
    issued: float, persist: float,
) -> set[int]:
    """Hosts (not ``own``) whose unreadable dblock showed the same bytes in a read that
    completed at least ``persist`` before a read issued at ``issued`` (pure)."""
    return {
        host for host, raw in area_bad.items()
        if host != own and host in bad_since and bad_since[host][0] == raw
        and issued - bad_since[host][1] >= persist
    }


# Stands in for a sector whose read failed (it is never a valid record: no magic starts
# with a NUL byte); see PaxosLease._read_sectors.
EIO_TAG = b"\0EIO"


def decode_area(data: bytes, layout: LeaseLayout, own: int | None = None) -> PaxosArea:
    """Decode a paxos area read. A dblock whose mbal leaves no room for a higher ballot is
    unreadable too (it would stop its instance for good), except ``own``: the block this
    process wrote itself."""
    parts = sectors(data, layout.sector_size)
    errors: list[RecordError] = []
    leader: LeaderRecord | None
    try:
        if parts[0].startswith(EIO_TAG):
            raise RecordError("leader", layout.leader_offset, "I/O error")
        leader = unpack_leader(parts[0], layout.leader_offset, layout.max_hosts)
    except RecordError as err:
        leader = None
        errors.append(err)
    blocks: dict[int, Dblock | None] = {}
    bad: dict[int, bytes] = {}
    for index, raw in enumerate(parts[PAXOS_FIRST_DBLOCK_SECTOR:]):
        host = index + 1
        try:
            if raw.startswith(EIO_TAG):
                raise RecordError("dblock", layout.dblock_offset(host), "I/O error")
            block = unpack_dblock(raw, layout.dblock_offset(host), host, layout.max_hosts)
            if host != own and block.mbal > MAX_BALLOT - 2 * layout.max_hosts:
                # No ballot could ever be higher: it would stop this instance for good.
                raise RecordError("dblock", layout.dblock_offset(host),
                                  f"mbal {block.mbal} leaves no room for a higher ballot")
            blocks[host] = block
        except RecordError as err:
            blocks[host] = None
            bad[host] = raw
            errors.append(err)
    return PaxosArea(leader, blocks, errors, bad)


class PaxosLease:
    def __init__(
        self,
        storage: SectorStorage,
        layout: LeaseLayout,
        host_id: int,
        timeouts: LeaseTimeouts,
        clock: Clock,
        rng: random.Random | None = None,
        guard: BallotGuard | None = None,
    ) -> None:
        layout.check_host(host_id)
        self.guard = guard
        self._bad_since: dict[int, tuple[bytes, float]] = {}  # host -> (raw, first seen)
        self._logged: dict[int, str] = {}  # offset -> reason already logged
        self._skip: dict[int, bytes] = {}  # this ballot: host -> the unreadable bytes skipped
        self.last_issued = 0.0
        self._wrote_own = False
        self.storage = storage
        self.layout = layout
        self.host_id = host_id
        self.timeouts = timeouts
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = PaxosStats()
        self.last_leader: LeaderRecord | None = None
        self.own: Dblock | None = None  # our dblock as last written (or read)
        self.log = get_logger("lease", host_id=host_id)
        self.repeats = Repeats(self.log, clock.now)  # retried I/O errors: once, then a count

    async def _read_sectors(self, err: StorageError) -> bytes:
        """The area read failed with an I/O error (not a timeout): read it sector by sector so
        one bad sector costs only its own record (EIO_TAG in its place). Re-raises ``err``
        if every sector fails."""
        ss = self.layout.sector_size
        parts: list[bytes] = []
        for offset in range(self.layout.paxos_start,
                            self.layout.paxos_start + self.layout.paxos_length, ss):
            try:
                parts.append(await self.storage.read(offset, ss))
            except IoTimeout:
                raise
            except StorageError:
                parts.append(EIO_TAG + bytes(ss - len(EIO_TAG)))
        if all(part.startswith(EIO_TAG) for part in parts):
            raise err
        self.stats.sector_reads += 1
        return b"".join(parts)

    async def read_area(self) -> PaxosArea:
        issued = self.clock.now()
        try:
            data = await self.storage.read(self.layout.paxos_start, self.layout.paxos_length)
        except (IoTimeout, UnalignedIoError):
            raise
        except StorageError as err:
            data = await self._read_sectors(err)
        done = self.clock.now()
        self.last_issued = issued
        area = decode_area(data, self.layout, self.host_id if self._wrote_own else None)
        self._note_errors(area.errors)
        for host in list(self._bad_since):
            if host not in area.bad:
                del self._bad_since[host]
        for host, raw in area.bad.items():
            seen = self._bad_since.get(host)
            if seen is None or seen[0] != raw:
                self._bad_since[host] = (raw, done)
        if area.leader is not None:
            self.last_leader = area.leader
        if self.own is None:
            self.own = area.blocks.get(self.host_id)
        return area

    def _note_errors(self, errors: list[RecordError], whole_area: bool = True) -> None:
        """Count every unreadable record; log each one once (again when its reason changes,
        or after it was readable in between)."""
        if whole_area:
            now_bad = {err.offset for err in errors}
            for offset in [o for o in self._logged if o not in now_bad]:
                del self._logged[offset]
        for err in errors:
            self.stats.record_errors += 1
            if self._logged.get(err.offset) != err.reason:
                self._logged[err.offset] = err.reason
                self.log.warning("lease record unreadable", error=str(err))

    def _fence(self) -> None:
        """Abort the ballot if our host id lease may have expired (no ballot write then)."""
        if self.guard is not None and self.clock.now() >= self.guard.valid_until():
            self.stats.fenced_ballots += 1
            raise BallotAborted("our host id lease may have expired")

    def _view(self, area: PaxosArea) -> BlockView:
        """The blocks a ballot goes by: an unreadable block skipped for this ballot is left
        out while it still shows the same bytes (so it cannot abort the ballot)."""
        if not self._skip:
            return area.blocks
        return {
            host: block for host, block in area.blocks.items()
            if not (block is None and area.bad.get(host) == self._skip.get(host))
        }

    async def _choose_skips(self, area: PaxosArea) -> None:
        """Which unreadable dblocks this ballot may go past (README, "Unreadable dblocks")."""
        self._skip = {}
        if self.guard is None or not area.bad:
            return
        persistent = skippable(self._bad_since, area.bad, self.host_id, self.last_issued,
                               self.timeouts.host_dead)
        if not persistent or len(persistent) < len(set(area.bad) - {self.host_id}):
            return  # some unreadable block is not a candidate: the ballot aborts anyway
        gone = await self.guard.gone(persistent)
        self._skip = {host: area.bad[host] for host in persistent & gone}
        if self._skip:
            self.stats.skipped_dblocks += len(self._skip)
            self.log.debug("ballot skips unreadable hosts", hosts=sorted(self._skip))

    async def _write_own(self, block: Dblock) -> None:
        await self.storage.write(
            self.layout.dblock_offset(self.host_id), pack_dblock(block, self.layout.sector_size)
        )
        self.own = block
        self._wrote_own = True

    async def _phase(self, block: Dblock, lver: int, mbal: int) -> BlockView:
        self._fence()
        await self._write_own(block)
        area = await self.read_area()
        if area.leader is not None and area.leader.lver >= lver:
            raise BallotAborted(f"lver {area.leader.lver} committed meanwhile")
        blocks = self._view(area)
        reason = abort_reason(blocks, lver, mbal, self.host_id)
        if reason:
            raise BallotAborted(reason)
        return blocks

    async def ballot(self, area: PaxosArea, lver: int, mine: Value) -> Value:
        """Run one ballot for instance ``lver``; the decided value. Raises BallotAborted."""
        self.stats.ballots += 1
        await self._choose_skips(area)
        view = self._view(area)
        own_mbal = self.own.mbal if self.own is not None and self.own.lver == lver else 0
        mbal = next_ballot(view, lver, self.host_id, self.layout.max_hosts, own_mbal)
        if lver >= MAX_LVER or mbal > MAX_BALLOT:
            # Only a hostile, checksum-valid record near a limit gets here: never write a
            # block nobody could read. The instance is stuck (README, "Bad records").
            raise BallotAborted(f"lver {lver} / ballot {mbal} past the limits")
        blocks = await self._phase(phase1_block(self.own, self.host_id, lver, mbal), lver, mbal)
        value = choose_value(blocks, lver, mine)
        await self._phase(phase2_block(self.host_id, lver, mbal, value), lver, mbal)
        return value

    async def commit(self, lver: int, value: Value) -> LeaderRecord:
        self._fence()
        leader = LeaderRecord(
            owner_id=value.host_id, owner_generation=value.generation, lver=lver,
            timestamp_us=max(1, int(self.clock.now() * 1e6)), write_id=self.host_id,
            io_timeout_ms=int(self.timeouts.io_timeout * 1000),
            sector_size=self.layout.sector_size, max_hosts=self.layout.max_hosts,
        )
        data = pack_leader(leader, self.layout.sector_size)
        await self.storage.write(self.layout.leader_offset, data)
        self.stats.commits += 1
        self.last_leader = leader
        return leader

    async def _may_run_next(
        self, leader: LeaderRecord, area: PaxosArea, generation: int, owner_gone: OwnerGone
    ) -> bool:
        if leader.free:
            return True
        owner_block = area.blocks.get(leader.owner_id)
        if (
            owner_block is not None
            and owner_block.lver == leader.lver
            and owner_block.flags & FLAG_RELEASED
        ):
            return True
        if leader.owner_id == self.host_id:
            return True  # our older incarnation, or a value adopted for us: we are not holding
        return await owner_gone(leader.owner_id, leader.owner_generation)

    async def acquire(self, generation: int, owner_gone: OwnerGone,
                      defer: Defer | None = None) -> int:
        """Loop until we own a new lver; return it. Cancel to give up. StorageError/RecordError
        are counted and retried after a poll interval. ``defer``: asked before every ballot;
        while it answers a wait, no ballot starts (the area is read again after it)."""
        mine = Value(self.host_id, generation)
        while True:
            try:
                area = await self.read_area()
                self.repeats.clear("SPM lease I/O failed")
                top = highest_lver(area.blocks)
                leader = area.leader
                if leader is None or leader.lver < top:
                    # a lost or overwritten commit: finish instance ``top``, unless its holder
                    # already held and released it (then ``top`` must not be won again)
                    lver = top + 1 if released_at(area.blocks, top) else max(top, 1)
                elif await self._may_run_next(leader, area, generation, owner_gone):
                    lver = leader.lver + 1
                else:
                    await self.clock.sleep(self.timeouts.acquire_poll)
                    continue
                wait = await defer(lver) if defer is not None else 0.0
                if wait > 0:
                    await self.clock.sleep(min(wait, self.timeouts.acquire_poll))
                    continue
                value = await self._guarded_ballot(area, lver, mine)
                if value == mine:
                    self.log.info("SPM lease acquired", lver=lver)
                    return lver
                self.log.info("SPM lease went to another host", lver=lver, owner=value.host_id)
            except BallotAborted as abort:
                self.stats.aborts += 1
                self.log.debug("ballot aborted", reason=str(abort))
                await self.clock.sleep(self.rng.uniform(0.0, self.timeouts.backoff_max))
            except StorageError as err:
                self.stats.io_errors += 1
                self.repeats.warning("SPM lease I/O failed", error=str(err))
                await self.clock.sleep(self.rng.uniform(0.0, self.timeouts.backoff_max))

    async def _guarded_ballot(self, area: PaxosArea, lver: int, mine: Value) -> Value:
        """Ballot and commit, with the watchdog armed for our host id lease's expiry."""
        self._fence()
        if self.guard is not None:
            self.guard.arm(self.guard.valid_until())
        try:
            value = await self.ballot(area, lver, mine)
            await self.commit(lver, value)
            return value
        finally:
            self._skip = {}
            if self.guard is not None:
                self.guard.arm(None)

    async def release(self, lver: int, generation: int) -> None:
        """Mark our dblock RELEASED for ``lver``; clear the leader if it still names us."""
        if self.own is not None and self.own.lver == lver:
            released = replace(self.own, flags=self.own.flags | FLAG_RELEASED)
            for _ in range(3):
                try:
                    await self._write_own(released)
                    self.repeats.clear("SPM lease release I/O failed")
                    break
                except StorageError as err:
                    self.stats.io_errors += 1
                    self.repeats.warning("SPM lease release I/O failed", error=str(err))
            self.repeats.clear("SPM lease release I/O failed", "gave up after 3 tries")
        raw = await self.storage.read(self.layout.leader_offset, self.layout.sector_size)
        try:
            leader = unpack_leader(raw, self.layout.leader_offset, self.layout.max_hosts)
        except RecordError as err:
            self._note_errors([err], whole_area=False)
            return
        self.last_leader = leader
        if (leader.owner_id, leader.owner_generation, leader.lver) != (
            self.host_id, generation, lver,
        ) or leader.flags & FLAG_RELEASED:
            return  # someone committed a newer version: leave it alone
        if self.guard is not None and self.clock.now() >= self.guard.valid_until():
            # Our host id lease may have expired: another host may be committing a newer
            # version right now, and a leader write of ours could land on top of it. Leave
            # the leader; others see our RELEASED block (or our host id gone) instead.
            self.log.info("SPM lease released (leader left: host id lease may have expired)",
                          lver=lver)
            return
        cleared = replace(leader, flags=leader.flags | FLAG_RELEASED, write_id=self.host_id)
        await self.storage.write(
            self.layout.leader_offset, pack_leader(cleared, self.layout.sector_size)
        )
        self.last_leader = cleared
        self.log.info("SPM lease released", lver=lver)
