"""Pause claims in the in-use records (``spm/handoff.py``, ``spm/handoffio.py``): the codec
round trip and range checks, the adoption rule's properties, and a source and a destination
handing one pause over through one shared (in-memory) metadata area."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.clock import ManualClock
from autoextend.monitor.arrival import ClaimedPause
from autoextend.monitor.pauseclaims import OwnPause
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm import handoff, inuse
from autoextend.spm.errors import CorruptSector
from autoextend.spm.handoff import Kind, PauseClaim, Seen, adoptable
from autoextend.spm.handoffio import HandoffUnavailable, StorageHandoff
from autoextend.spm.inuse import InUseRecord
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.sealing import seal
from autoextend.volumes import VolumeRef

from .fakes import FAST, Watched, layout_for

U64 = st.integers(0, (1 << 64) - 1)
CLAIMS = st.builds(PauseClaim, st.sampled_from(Kind), U64, U64, st.integers(1, 2000),
                   st.integers(1, (1 << 64) - 1))


@st.composite
def records(draw: st.DrawFn) -> InUseRecord:
    claims = tuple(sorted(draw(st.frozensets(CLAIMS, max_size=handoff.MAX_CLAIMS))))
    hashes = draw(st.frozensets(U64, max_size=inuse.max_volumes(len(claims))))
    return InUseRecord(3, draw(st.integers(0, inuse.MAX_RECORD_GENERATION)),
                       draw(st.integers(1, (1 << 64) - 1)), draw(U64), hashes,
                       draw(st.booleans()), claims)


@given(records(), st.sampled_from([512, 4096]))
def test_round_trip_with_claims(record: InUseRecord, sector_size: int) -> None:
    raw = inuse.encode(record, sector_size)
    assert len(raw) % sector_size == 0 and len(raw) <= inuse.RECORD_BYTES
    assert inuse.decode(raw + bytes(inuse.RECORD_BYTES - len(raw)), 3) == record


@given(st.lists(CLAIMS, max_size=80), st.lists(st.text(min_size=1), max_size=600))
def test_make_record_fits_claims_before_hashes(claims: list[PauseClaim],
                                               names: list[str]) -> None:
    rec = inuse.make_record(3, 1, 1, 0, names, claims)
    assert len(rec.claims) == min(len(set(claims)), handoff.MAX_CLAIMS)
    tombstones = {c for c in claims if c.kind is Kind.ADOPTED}
    assert set(rec.claims) >= set(sorted(tombstones)[:handoff.MAX_CLAIMS])  # kept first
    assert len(rec.hashes) <= inuse.max_volumes(len(rec.claims))
    assert rec.overflow == (len({inuse.volume_hash(n) for n in names}) > len(rec.hashes))
    assert inuse.decode(inuse.encode(rec, 512), 3) == rec


def _raw_claims(entries: list[tuple[int, int, int, int, int, int, int]]) -> bytes:
    buf = bytearray(inuse.RECORD_BYTES)
    inuse.HEAD.pack_into(buf, 0, inuse.MAGIC, 1, 0, 0, 3, len(entries), 0, 1, 1, 0)
    for i, e in enumerate(entries):
        handoff.ENTRY.pack_into(buf, inuse.HEAD_SIZE + i * handoff.ENTRY_SIZE, *e)
    length = inuse.HEAD_SIZE + handoff.ENTRY_SIZE * len(entries)
    seal(buf, inuse.CRC_OFFSET, length)
    return bytes(buf)


@pytest.mark.parametrize(("entries", "problem"), [
    ([(1, 2, 3, 4, 3, 0, 0)], "kind 3"),
    ([(1, 2, 3, 4, 0, 0, 0)], "kind 0"),
    ([(1, 2, 0, 4, 1, 0, 0)], "pause id"),
    ([(1, 2, 3, 0, 1, 0, 0)], "origin"),
    ([(1, 2, 3, 2001, 1, 0, 0)], "origin"),
    ([(1, 2, 3, 4, 1, 1, 0)], "reserved"),
    ([(1, 2, 3, 4, 1, 0, 9)], "reserved"),
    ([(1, 2, 3, 4, 1, 0, 0), (1, 2, 3, 4, 1, 0, 0)], "ascending"),
    ([(2, 2, 3, 4, 1, 0, 0), (1, 2, 3, 4, 1, 0, 0)], "ascending"),
    ([(1, 2, 3, 4, 2, 0, 0), (1, 2, 3, 4, 1, 0, 0)], "ascending"),
])
def test_checksum_valid_claims_are_range_checked(
        entries: list[tuple[int, int, int, int, int, int, int]], problem: str) -> None:
    with pytest.raises(CorruptSector, match=problem):
        inuse.decode(_raw_claims(entries), 3)


def test_claims_that_do_not_fit_are_corrupt() -> None:
    buf = bytearray(_raw_claims([]))
    struct.pack_into("<H", buf, 6, inuse.MAX_VOLUMES)  # 507 hashes
    struct.pack_into("<H", buf, 10, 1)  # and a claim
    with pytest.raises(CorruptSector, match="do not fit"):
        inuse.decode(bytes(buf), 3)


def test_encode_refuses_out_of_range_claims() -> None:
    rec = InUseRecord(3, 1, 1, 0, frozenset(), claims=(PauseClaim(Kind.CLAIM, 1, 2, 0, 5),))
    with pytest.raises(ValueError, match="origin"):
        inuse.encode(rec, 512)


# ------------------------------------------------------------------ the adoption rule

SEEN = st.builds(Seen, st.integers(0, 3), st.integers(1, 8),
                 st.lists(CLAIMS, max_size=4).map(tuple))


@given(st.integers(0, 3), st.frozensets(st.integers(0, 3)), st.integers(1, 4),
       st.dictionaries(st.integers(1, 4), SEEN), st.dictionaries(st.integers(1, 4), SEEN))
def test_adoptable_keeps_the_rule(vm: int, volumes: frozenset[int], me: int,
                                  base: dict[int, Seen], look: dict[int, Seen]) -> None:
    found = adoptable(vm, volumes, me, base, look)
    gone = {c.identity for h, s in look.items() if h != me for c in s.claims
            if c.kind is Kind.ADOPTED}
    for c in found:
        assert c.kind is Kind.CLAIM and c.vm == vm and c.volume in volumes
        assert c.identity not in gone
        hosts = [h for h, s in look.items() if c in s.claims and h != me]
        assert any(handoff.fresh(look[h], base.get(h)) for h in hosts)


def test_adoptable_examples() -> None:
    claim = PauseClaim(Kind.CLAIM, 10, 20, 1, 555)
    base = {1: Seen(4, 100)}
    assert adoptable(10, {20}, 2, base, {1: Seen(4, 101, (claim,))}) == ()  # not fresh yet
    assert adoptable(10, {20}, 2, base, {1: Seen(4, 102, (claim,))}) == (claim,)
    assert adoptable(10, {20}, 2, base, {1: Seen(5, 900, (claim,))}) == ()  # another run
    assert adoptable(10, {21}, 2, base, {1: Seen(4, 102, (claim,))}) == ()  # not its volume
    assert adoptable(10, {20}, 1, base, {1: Seen(4, 102, (claim,))}) == ()  # its own
    tomb = claim.adopted_by_me()
    assert adoptable(10, {20}, 2, base, {1: Seen(4, 102, (claim,)),
                                         3: Seen(1, 1, (tomb,))}) == ()  # adopted by 3
    assert adoptable(10, {20}, 2, base, {1: Seen(4, 102, (claim,)),
                                         2: Seen(1, 1, (tomb,))}) == (claim,)  # by me
    assert adoptable(10, {20}, 2, {}, {1: Seen(4, 1, (claim,))}) == (claim,)  # new record


# ------------------------------------------------------------------ through the storage

VOL = VolumeRef("vg0", "lv1")


async def test_a_pause_is_handed_over_once_through_the_records() -> None:
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    clock = ManualClock()
    own: list[OwnPause] = []

    async def nothing() -> list[str]:
        return []

    def host(host_id: int, claims: list[OwnPause]) -> tuple[StorageHandoff, InUsePublisher]:
        h = StorageHandoff(host_id, lambda: claims, clock)
        pub = InUsePublisher(storage, layout, host_id, nothing, lambda: 7, clock,
                             pause_claims=h.claims)
        h.bind(storage, layout, pub)
        return h, pub

    src, src_pub = host(1, own)
    dst, dst_pub = host(2, [])
    third, _ = host(3, [])
    with pytest.raises(HandoffUnavailable):  # not joined: no reads
        await StorageHandoff(4, list, clock).baseline()
    for pub in (src_pub, dst_pub):
        await pub.start()
        await pub.publish_once()
    own.append(OwnPause("vm1", VOL, 4242))
    await src_pub.publish_once()  # claimed before the guest arrived
    base = await dst.baseline()
    assert await dst.claimed("vm1", {VOL}, base) is None  # not written after the arrival
    await src_pub.publish_once()
    assert await dst.claimed("vm1", {VOL}, base) is None  # one publish may predate it
    await src_pub.publish_once()
    found = await dst.claimed("vm1", {VOL}, base)
    assert found is not None and found.origin == 1 and found.pause_id == 4242
    assert found.volumes == {VOL}
    assert await dst.claimed("vm2", {VOL}, base) is None  # another VM
    await dst.adopt("vm1", found)
    # A third host never adopts it again, however fresh the source's record.
    base3 = await third.baseline()
    for _ in range(3):
        await src_pub.publish_once()
    assert await third.claimed("vm1", {VOL}, base3) is None
    # The tombstone lapses after TOMBSTONE_S (the source's claim lapsed long before).
    clock.advance(handoff.TOMBSTONE_S)
    await dst_pub.publish_once()
    assert dst_pub.last is not None and dst_pub.last.claims == ()


async def test_adopt_fails_when_the_tombstone_is_not_written() -> None:
    layout = layout_for(FAST)
    storage = Watched(MemoryStorage(layout.end, 512))
    clock = ManualClock()

    async def nothing() -> list[str]:
        return []

    dst = StorageHandoff(2, list, clock)
    pub = InUsePublisher(storage, layout, 2, nothing, lambda: 7, clock,
                         pause_claims=dst.claims)
    dst.bind(storage, layout, pub)
    await pub.start()
    storage.fail_writes = True
    with pytest.raises(HandoffUnavailable, match="tombstone"):
        await dst.adopt("vm1", ClaimedPause(1, 5, frozenset({VOL})))
