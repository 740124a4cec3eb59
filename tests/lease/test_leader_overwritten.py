"""A lease version is never handed out twice, even when the leader record goes backwards.

Found by the simulation (seed 7 once the reduce path was in it): a fenced ex-SPM's release
read the leader (its own version 314), then its leader write, slowed by the storage, landed
seconds after another host (h1) had committed 315, and put "314 released" back. h1 later
stepped down (its dblock at 315 RELEASED; the leader did not name it, so it left the leader
alone) and acquired again: the leader was behind the dblocks, so it re-ran instance 315, won
its own old value and returned 315 a second time. A term number used twice lets a late
write of the first term pass the second term's checks. Now an instance whose holder released
it is over: acquire runs the next one (``ballot.released_at``)."""

from __future__ import annotations

from dataclasses import replace

from autoextend.clock import MonotonicClock
from autoextend.lease.ballot import released_at
from autoextend.lease.format import FLAG_RELEASED, Dblock, pack_leader, unpack_leader
from autoextend.lease.layout import LeaseLayout
from autoextend.lease.paxos import PaxosLease
from autoextend.lease.timeouts import lease_timeouts

from .helpers import MAX_HOSTS, T, W, memory_area


async def never_gone(owner: int, generation: int) -> bool:
    return False


def test_released_at_only_counts_a_released_block_of_that_version() -> None:
    held = Dblock(1, 315, 9, 9, 1, 1)
    assert not released_at({1: held, 2: None}, 315)
    gone = replace(held, flags=FLAG_RELEASED)
    assert released_at({1: gone, 2: None}, 315)
    assert not released_at({1: gone}, 316)  # an older version's release says nothing of 316


async def test_a_version_is_not_won_again_after_the_leader_went_back() -> None:
    storage = await memory_area()
    layout = LeaseLayout(0, 512, MAX_HOSTS)
    to = lease_timeouts(T, W)
    clock = MonotonicClock()
    old = PaxosLease(storage, layout, 2, to, clock)  # the ex-SPM
    h1 = PaxosLease(storage, layout, 1, to, clock)

    first = await old.acquire(1, never_gone)
    stale = await storage.read(layout.leader_offset, layout.sector_size)  # old's release read
    await old.release(first, 1)  # (its dblock RELEASED; the late leader write comes below)
    taken = await h1.acquire(1, never_gone)
    assert taken == first + 1
    # old's leader write lands late, on top of h1's commit: "first, released"
    back = replace(unpack_leader(stale, layout.leader_offset, MAX_HOSTS), flags=FLAG_RELEASED)
    await storage.write(layout.leader_offset, pack_leader(back, layout.sector_size))

    await h1.release(taken, 1)  # h1 steps down: its block RELEASED, the leader is not its own
    again = await h1.acquire(1, never_gone)
    assert again > taken, f"version {taken} handed out twice"
    leader = unpack_leader(await storage.read(layout.leader_offset, layout.sector_size),
                           layout.leader_offset, MAX_HOSTS)
    assert (leader.lver, leader.owner_id) == (again, 1)
