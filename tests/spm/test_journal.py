"""The journal of metadata changes (issue 33): its place in the metadata area, its record
codec, the ring on storage (wrap-around, head recovery after a crash mid-write, group
commit, the term check) and the executor's records (pure logic on in-memory storage)."""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import replace

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.capacity.committed_record import record_offset as committed_record_offset
from autoextend.capacity.record import record_offset as vg_record_offset
from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.lease.config import LeaseSettings
from autoextend.lease.engine_record import record_offset as engine_record_offset
from autoextend.lease.layout import LeaseLayout, max_hosts_limit
from autoextend.metadata_area import (
    JOURNAL_OFFSET,
    JOURNAL_RECORDS,
    JOURNAL_SIZE,
    LEASE_AREA_SIZE,
    MAILBOX_MAX_SIZE,
    MIB,
    AreaTooSmall,
    check_journal_fits,
    journal_end,
    journal_start,
    mailbox_start,
)
from autoextend.sectorfakes import FaultPlan, FaultyStorage, MemoryStorage
from autoextend.sectors import SectorStorage
from autoextend.spm import journal
from autoextend.spm.config import MailboxSettings, journal_base
from autoextend.spm.execute import Executor
from autoextend.spm.journal import Entry, Op, Record, decode, encode, scan_slots
from autoextend.spm.journalring import JournalWriter, Ring, clear_ring, read_ring
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.wire import OP_REDUCE, Request, Status
from autoextend.validation import cluster_rule
from autoextend.volumes import VolumeRef
from tests.hypo import examples

from .fakes import VOL, Authority, RecordingBackend, ReducingBackend

NAME = st.from_regex(r"[a-z0-9+_.][a-z0-9+_.-]{0,40}", fullmatch=True).filter(
    lambda n: n not in (".", ".."))
U64 = st.integers(0, (1 << 64) - 1)


def entries() -> st.SearchStrategy[Entry]:
    """Any entry; a grow-pv names a VG and no LV ("vg/")."""
    return st.builds(Entry, st.sampled_from(Op), NAME, NAME, U64, U64, U64,
                     st.integers(1, 2000), st.integers(0, 2000), st.integers(0, 2**32 - 1),
                     st.integers(0, 2**32 - 1), U64, st.booleans()).map(
        lambda e: replace(e, lv="") if e.op is Op.GROW_PV else e)


def entry(n: int = 0, lver: int = 1) -> Entry:
    return Entry(Op.EXTEND, "vg0", f"lv{n}", n * MIB, (n + 1) * MIB, lver, 1, 2, n + 1, 1,
                 1_700_000_000_000_000 + n)


# ---- where it lives -----------------------------------------------------------------------


@settings(deadline=None, max_examples=examples(60))
@given(st.sampled_from([512, 4096]), st.integers(1, 2000), st.integers(0, 64))
def test_no_two_regions_of_the_metadata_area_overlap(sector_size: int, max_hosts: int,
                                                     area_mib: int) -> None:
    """Lease records, the VG record, the engine record, every mailbox region and the
    journal's records: none overlaps another, at either sector size and any max_hosts."""
    area = area_mib * MIB
    lease = LeaseLayout(area, sector_size, min(max_hosts, max_hosts_limit(sector_size)))
    mailbox = MailboxLayout(mailbox_start(None, area), sector_size, max_hosts)
    start = journal_start(None, area, mailbox.base)
    regions = [("delta leases", lease.delta_start, lease.delta_start + lease.delta_length),
               ("paxos leases", lease.paxos_start, lease.paxos_start + lease.paxos_length),
               ("VG record", vg_record_offset(area, sector_size),
                vg_record_offset(area, sector_size) + sector_size),
               ("committed record", committed_record_offset(area, sector_size),
                committed_record_offset(area, sector_size) + sector_size),
               ("engine record", engine_record_offset(area),
                engine_record_offset(area) + sector_size),
               *mailbox.regions(),
               ("journal", start, journal_end(start))]
    regions.sort(key=lambda r: r[1])
    for (a, _, a_end), (b, b_start, _) in zip(regions, regions[1:], strict=False):
        assert a_end <= b_start, f"{a} overlaps {b}"
    assert lease.end <= area + LEASE_AREA_SIZE <= mailbox.base
    assert start % MIB == 0 and start == area + JOURNAL_OFFSET  # never moves with max_hosts
    # The journal's own records: whole sectors hold whole records, one slot each.
    ring = Ring(start)
    assert sector_size % journal.RECORD_SIZE == 0
    assert ring.offset(JOURNAL_RECORDS - 1) + journal.RECORD_SIZE == journal_end(start)
    assert JOURNAL_RECORDS >= 100_000 and ring.size == JOURNAL_SIZE


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_the_largest_mailbox_fits_before_the_journal(sector_size: int) -> None:
    assert MailboxLayout(0, sector_size, 2000).total_bytes <= MAILBOX_MAX_SIZE


def test_a_mailbox_moved_past_the_default_moves_the_journal_after_it() -> None:
    moved = 50 * MIB
    start = journal_start(None, 0, moved)
    assert start >= MailboxLayout(moved, 4096, 2000).end and start % MIB == 0
    assert journal_start(7 * MIB, 0, moved) == 7 * MIB  # configured wins


def test_an_area_too_small_for_the_journal_is_refused_with_the_size_it_needs() -> None:
    start = journal_start(None)
    check_journal_fits("/dev/x", start, journal_end(start))
    with pytest.raises(AreaTooSmall, match=r"grow the metadata area to at least 77 MiB"):
        check_journal_fits("/dev/x", start, 64 * MIB)


# ---- the record codec ---------------------------------------------------------------------


@settings(max_examples=examples(200))
@given(entries(), st.integers(1, (1 << 63) - 1))
def test_a_record_round_trips(e: Entry, seq: int) -> None:
    data = encode(Record(seq, e))
    assert len(data) == journal.RECORD_SIZE
    assert decode(data) == Record(seq, e)


@settings(max_examples=examples(200))
@given(entries(), st.integers(0, journal.RECORD_SIZE - 1), st.integers(1, 255))
def test_a_damaged_record_is_refused_never_misread(e: Entry, at: int, xor: int) -> None:
    data = bytearray(encode(Record(5, e)))
    data[at] ^= xor
    with pytest.raises(journal.BadRecord):
        decode(bytes(data))


def test_an_empty_slot_is_none_and_values_out_of_range_are_not_encoded() -> None:
    assert decode(bytes(journal.RECORD_SIZE)) is None
    for bad in (Record(0, entry()), Record(1, Entry(Op.EXTEND, "vg0", "a/b", 0, 1, 1, 1)),
                Record(1, Entry(Op.EXTEND, "vg0", "lv", 0, 1, 1, 2001))):
        with pytest.raises(ValueError):
            encode(bad)


@settings(max_examples=examples(100))
@given(st.lists(st.integers(0, 40), min_size=1, max_size=16, unique=True),
       st.integers(0, 4095), st.integers(0, 2**32), st.booleans())
def test_a_torn_sector_gives_only_whole_old_or_new_records_and_counts_the_rest(
        seqs: list[int], tear: int, seed: int, old_after: bool) -> None:
    """A 4 KiB sector of records rewritten with more records, torn at any byte (new bytes
    before the tear, the old bytes or garbage after it): every record a scan returns is one
    that was written, and every slot is a record, empty or counted as skipped."""
    records = 16
    old = bytearray(4096)
    new = bytearray(4096)
    written = {}
    for i, n in enumerate(seqs):
        rec = Record(n * records + i + 1, entry(n))  # slot i of a 16-slot ring
        written[rec.seq] = rec
        new[i * 256:(i + 1) * 256] = encode(rec)
        if n % 2:
            old[i * 256:(i + 1) * 256] = encode(rec)  # some were there before
    after = bytes(old) if old_after else random.Random(seed).randbytes(4096)  # what was there, or garbage
    torn = bytes(new[:tear]) + after[tear:]
    scan = scan_slots(torn, 0, records)
    assert all(written.get(r.seq) == r for r in scan.records)
    assert len(scan.records) + scan.skipped + scan.empty == records
    clean = scan_slots(bytes(new), 0, records)
    assert sorted(r.seq for r in clean.records) == sorted(written) and clean.skipped == 0


def test_a_valid_record_in_the_wrong_slot_is_garbage() -> None:
    data = encode(Record(3, entry()))  # seq 3 belongs in slot 2
    assert scan_slots(data, 0, 8).skipped == 1
    assert scan_slots(data, 2, 8).records == [Record(3, entry())]


# ---- the ring on storage ------------------------------------------------------------------


def _storage(sector_size: int, records: int) -> tuple[MemoryStorage, Ring]:
    base = 8 * sector_size
    return MemoryStorage(base + records * 256 + 8 * sector_size, sector_size), Ring(base, records)


def _writer(storage: SectorStorage, ring: Ring, lver: int = 1, host: int = 1,
            authority: Authority | None = None) -> JournalWriter:
    return JournalWriter(storage, ring, authority or Authority(), lver=lver, spm_host=host,
                         wall=lambda: 1_700_000_000.0)


@pytest.mark.parametrize("sector_size", [512, 4096])
async def test_the_ring_wraps_around_and_keeps_the_newest_records(sector_size: int) -> None:
    storage, ring = _storage(sector_size, 64)
    writer = _writer(storage, ring)
    for n in range(200):
        await writer.append(entry(n))
    scan = await read_ring(storage, ring)
    seqs = [r.seq for r in scan.records]
    per = journal.per_sector(sector_size)
    assert seqs == list(range(201 - len(seqs), 201))  # the newest, in order, no gap
    assert 64 - per < len(seqs) <= 64 and scan.skipped == 0
    assert all(r.entry == entry(r.seq - 1) for r in scan.records)
    # The next SPM continues after the head, in the slot after it.
    again = _writer(storage, ring, lver=2, host=3)
    assert await again.append(entry(999, lver=2)) == 201
    assert (await read_ring(storage, ring)).records[-1] == Record(201, entry(999, lver=2))
    # Nothing outside the ring was written.
    assert not any(storage.data[:ring.base]) and not any(storage.data[ring.base + ring.size:])


@pytest.mark.parametrize("sector_size", [512, 4096])
async def test_a_crash_mid_write_loses_only_the_record_being_written(sector_size: int) -> None:
    storage, ring = _storage(sector_size, 64)
    first = _writer(storage, ring)
    for n in range(5):
        await first.append(entry(n))
    # The SPM died while writing seq 6 and 7: seq 6's record is half there, 7 is garbage.
    six = ring.offset(journal.slot_of(6, ring.records))
    storage.data[six + 40:six + 256] = encode(Record(6, entry(5)))[40:]  # head not written
    seven = ring.offset(journal.slot_of(7, ring.records))
    storage.data[seven:seven + 256] = b"\xa5" * 256
    second = _writer(storage, ring, lver=2, host=2)
    await second.prepare()
    assert second.head == 5 and second.counters.skipped_at_start == 2
    assert await second.append(entry(50, lver=2)) == 6
    scan = await read_ring(storage, ring)
    assert [r.seq for r in scan.records] == [1, 2, 3, 4, 5, 6]
    assert scan.records[-1].entry.lver == 2 and scan.records[4].entry.lver == 1
    # Seq 7's garbage stays until a record overwrites it, or goes with the rewrite of the
    # head's sector when it shares it (4 KiB: 16 records a sector).
    assert scan.skipped == (1 if sector_size == 512 else 0)


@pytest.mark.parametrize("sector_size", [512, 4096])
async def test_concurrent_changes_share_sector_writes(sector_size: int) -> None:
    storage, ring = _storage(sector_size, 256)
    writer = _writer(storage, ring)
    await writer.prepare()
    seqs: list[int] = []

    async def one(n: int) -> None:
        seqs.append(await writer.append(entry(n)))

    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(one, n)
    assert sorted(seqs) == list(range(1, 41))
    assert writer.counters.sectors <= writer.counters.appended == 40  # <= 1 per change
    assert writer.counters.writes < 40  # batched
    assert [r.seq for r in (await read_ring(storage, ring)).records] == list(range(1, 41))


async def test_the_term_is_checked_before_every_write() -> None:
    storage, ring = _storage(512, 64)
    authority = Authority()
    writer = _writer(storage, ring, authority=authority)
    await writer.append(entry(0))
    checks = authority.checks
    await writer.append(entry(1))
    assert authority.checks == checks + 1
    authority.valid = False
    before = bytes(storage.data)
    with pytest.raises(NotSpmError):
        await writer.note(Op.EXTEND, VOL, MIB, 2 * MIB, host=2, request_id=9)
    assert bytes(storage.data) == before


@pytest.mark.parametrize("sector_size", [512, 4096])
async def test_a_torn_write_loses_the_record_not_the_change_and_the_next_spm_goes_on(
        sector_size: int) -> None:
    """The fault injector tears every write (a byte prefix of its first sector lands, the
    caller gets StorageError): the record is lost and counted, nothing is raised, and the
    next SPM finds the head at the last whole record and writes over the torn one."""
    storage, ring = _storage(sector_size, 64)
    first = _writer(storage, ring)
    for n in range(3):
        await first.append(entry(n))
    torn = FaultyStorage(storage, FaultPlan(seed=1, torn_prob=1.0), ManualClock(), 1.0)
    dying = _writer(torn, ring)
    assert await dying.note(Op.EXTEND, VOL, MIB, 2 * MIB, host=2) is None
    assert dying.counters.failures == 1 and dying.counters.appended == 0
    assert torn.counts.torn_writes >= 1
    # The prefix that landed may hold the whole record (its tail is NUL padding): then it
    # is there, although its writer counted it lost; else it is torn and skipped.
    landed = (await read_ring(storage, ring)).head
    assert landed in (3, 4)
    after = _writer(storage, ring, lver=2, host=2)
    assert await after.append(entry(9, lver=2)) == landed + 1
    scan = await read_ring(storage, ring)
    assert [r.seq for r in scan.records] == list(range(1, landed + 2)) and scan.skipped == 0
    assert scan.records[:3] == [Record(n + 1, entry(n)) for n in range(3)]
    assert scan.records[-1] == Record(landed + 1, entry(9, lver=2))


async def test_clear_ring_zeroes_the_ring_only() -> None:
    storage, ring = _storage(4096, 64)
    storage.data[:] = b"\x01" * len(storage.data)
    await clear_ring(storage, ring)
    assert not any(storage.data[ring.base:ring.base + ring.size])
    assert storage.data[ring.base - 1] == 1 and storage.data[ring.base + ring.size] == 1


# ---- what the SPM records -----------------------------------------------------------------


async def test_the_executor_records_every_change_and_only_changes() -> None:
    storage, ring = _storage(512, 64)
    backend = RecordingBackend({VOL: 64 * MIB})
    writer = _writer(storage, ring, lver=7, host=1)
    executor = Executor(backend, Authority(), ManualClock(), hot_window_s=0.0,
                        max_concurrent=4, journal=writer)
    verdict = await executor.execute(2, 5, Request(11, "vg0", "lv1", 128 * MIB))
    assert verdict is not None and verdict.status is Status.OK
    await executor.execute(3, 6, Request(12, "vg0", "lv1", 100 * MIB))  # no change
    await executor.execute(3, 6, Request(13, "vg0", "nope", 100 * MIB))  # no such volume
    scan = await read_ring(storage, ring)
    assert scan.records == [Record(1, Entry(Op.EXTEND, "vg0", "lv1", 64 * MIB, 128 * MIB, 7,
                                            1, 2, 11, 5, 1_700_000_000_000_000))]


async def test_a_change_an_spm_died_before_recording_is_recorded_late() -> None:
    """The old SPM grew lv1 to 128 MiB (recorded), then to 192 MiB, and died before its
    record; the next SPM serves the request again, finds 192 MiB and records it, FOUND,
    from 128 MiB. A volume the ring knows nothing of, or one at its journaled size, gets
    no record."""
    storage, ring = _storage(512, 64)
    await _writer(storage, ring, lver=1).append(
        Entry(Op.EXTEND, "vg0", "lv1", 64 * MIB, 128 * MIB, 1, 1, 2, 10, 5))
    other = VolumeRef("vg0", "other")
    backend = RecordingBackend({VOL: 192 * MIB, other: 64 * MIB})
    writer = _writer(storage, ring, lver=2, host=3)
    executor = Executor(backend, Authority(), ManualClock(), hot_window_s=0.0,
                        max_concurrent=4, journal=writer)
    for req in (Request(11, "vg0", "lv1", 192 * MIB), Request(11, "vg0", "lv1", 192 * MIB),
                Request(12, "vg0", "other", 32 * MIB)):
        verdict = await executor.execute(2, 5, req)
        assert verdict is not None and verdict.status is Status.OK
    records = (await read_ring(storage, ring)).records
    assert [r.seq for r in records] == [1, 2]
    assert records[1].entry == Entry(Op.EXTEND, "vg0", "lv1", 128 * MIB, 192 * MIB, 2, 3, 2,
                                     11, 5, 1_700_000_000_000_000, found=True)


async def test_a_reduce_is_recorded_with_the_size_before() -> None:
    storage, ring = _storage(512, 64)
    writer = _writer(storage, ring, lver=3)
    executor = Executor(ReducingBackend(256 * MIB), Authority(), ManualClock(),
                        hot_window_s=0.0, max_concurrent=4, reduce_checks=(), journal=writer)
    verdict = await executor.execute(4, 1, Request(21, "vg0", "lv1", 128 * MIB, OP_REDUCE))
    assert verdict is not None and verdict.status is Status.OK
    [rec] = (await read_ring(storage, ring)).records
    assert (rec.entry.op, rec.entry.old_size, rec.entry.new_size, rec.entry.host,
            rec.entry.request_id) == (Op.REDUCE, 256 * MIB, 128 * MIB, 4, 21)
    assert rec.entry.volume == str(VolumeRef("vg0", "lv1"))


# ---- its configuration --------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "problem"), [
    (45 * MIB + 4096, "must be a multiple of 1048576"),
    (2 * MIB, "overlaps the lease area"),
    (6 * MIB, "overlaps the mailbox"),
    (None, None),
    (60 * MIB, None),
])
def test_a_configured_journal_offset_is_checked(offset: int | None, problem: str | None) -> None:
    lease = LeaseSettings(path="/dev/x", host_id=1, max_hosts=250)
    mailbox = MailboxSettings(journal=True, journal_offset=offset)
    found = [text for key, text in cluster_rule(lease, mailbox, ("vg0",))
             if key == "mailbox.journal_offset"]
    assert bool(found) == (problem is not None)
    assert problem is None or any(problem in text for text in found), found
    assert journal_base(mailbox) == (JOURNAL_OFFSET if offset is None else offset)


def test_a_grow_pv_names_a_vg_and_no_lv_and_the_other_ops_one_lv() -> None:
    grow = Entry(Op.GROW_PV, "vg0", "", 64 * MIB, 128 * MIB, 1, 1)
    rec = decode(encode(Record(3, grow)))
    assert rec is not None and rec.entry == grow and rec.entry.volume == "vg0/"
    for op in (Op.EXTEND, Op.REDUCE, Op.CREATE, Op.REMOVE):
        with pytest.raises(ValueError):
            encode(Record(1, replace(grow, op=op)))
    with pytest.raises(ValueError):
        encode(Record(1, replace(grow, lv="lv1")))
    # A checksum-valid "vg/" record of another op is garbage, never an LV named "".
    data = bytearray(encode(Record(3, grow)))
    data[5] = int(Op.REMOVE)
    struct.pack_into("<I", data, journal.CRC_OFFSET, 0)
    struct.pack_into("<I", data, journal.CRC_OFFSET, zlib.crc32(data))
    with pytest.raises(journal.BadRecord):
        decode(bytes(data))
