"""The wire format and layout: round trips, corruption detection, torn sectors (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.spm.errors import CorruptSector, LayoutError
from autoextend.spm.generation import after
from autoextend.spm.host import local_rejection, next_retry_delay, reply_poll_interval
from autoextend.spm.layout import SLOTS_PER_HOST, MailboxLayout, contiguous_runs
from autoextend.spm.wire import (
    HOST_GENERATION_LIMIT,
    MAX_SIZE,
    NAME_FIELD,
    OP_CREATE,
    OP_GROW_PV,
    OPS,
    REQUEST_SLOT,
    SLOT_SIZE,
    Kind,
    MalformedSlot,
    ReasonCode,
    Reply,
    Request,
    Ring,
    Status,
    decode_reply,
    decode_request,
    decode_ring,
    decode_sector,
    encode_reply,
    encode_request,
    encode_ring,
    encode_sector,
    head_slots,
    slots_per_sector,
)
from autoextend.volumes import VolumeRef
from tests.hypo import examples

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_.-"
names = st.text(NAME_CHARS, min_size=1, max_size=50)
ids = st.integers(1, 0xFFFFFFFF)
sizes = st.integers(0, MAX_SIZE)
gens = st.integers(1, HOST_GENERATION_LIMIT)
SECTOR_SIZES = st.sampled_from([512, 4096])


@st.composite
def requests(draw: st.DrawFn) -> Request:
    op = draw(st.sampled_from(OPS))
    if op == OP_CREATE:  # a create's name has 96 bytes, and it carries a virtual size
        short = st.text(NAME_CHARS, min_size=1, max_size=47)
        return Request(draw(ids), draw(short), draw(short), draw(sizes), op,
                       draw(st.integers(1, MAX_SIZE)))
    lv = "" if op == OP_GROW_PV else draw(names)
    return Request(draw(ids), draw(names), lv, draw(sizes), op)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    return Reply(
        draw(ids), draw(gens), draw(st.sampled_from(list(Status))),
        draw(sizes), draw(st.sampled_from(list(ReasonCode))), draw(st.text(max_size=40)),
    )


@st.composite
def request_sectors(draw: st.DrawFn) -> tuple[int, int, int, int, list[Request | None]]:
    sector_size = draw(SECTOR_SIZES)
    count = draw(st.integers(1, slots_per_sector(sector_size)))
    slots = draw(st.lists(st.none() | requests(), min_size=count, max_size=count))
    return sector_size, draw(st.integers(0, 255)), draw(st.integers(1, 2000)), draw(
        gens), slots


@given(requests())
def test_request_slot_round_trip(req: Request) -> None:
    raw = encode_request(req)
    assert len(raw) == SLOT_SIZE
    assert decode_request(raw) == req


@given(replies())
def test_reply_slot_round_trip(reply: Reply) -> None:
    assert decode_reply(encode_reply(reply)) == reply


def test_reply_text_is_cut_on_a_character_boundary() -> None:
    reply = Reply(1, 1, Status.FAILED, 0, ReasonCode.NO_SPACE, "é" * 80)
    decoded = decode_reply(encode_reply(reply))
    assert isinstance(decoded, Reply)
    assert decoded.text == "é" * 50


def test_empty_slots_and_zero_sector_are_empty() -> None:
    assert decode_request(bytes(SLOT_SIZE)) is None
    assert decode_reply(bytes(SLOT_SIZE)) is None
    sector = decode_sector(bytes(512), Kind.REQUEST, 3, 7)
    assert sector.generation == 0 and all(slot is None for slot in sector.slots)


def test_encode_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        encode_request(Request(0, "vg", "lv", 1))
    with pytest.raises(ValueError):
        encode_request(Request(1, "vg", "x" * NAME_FIELD, 1))
    with pytest.raises(ValueError):
        encode_request(Request(1, "vg", "lv", MAX_SIZE + 1))


@given(request_sectors())
def test_sector_round_trip(case: tuple[int, int, int, int, list[Request | None]]) -> None:
    sector_size, index, host, generation, slots = case
    data = encode_sector(Kind.REQUEST, sector_size, index, host, generation, slots)
    assert len(data) == sector_size
    sector = decode_sector(data, Kind.REQUEST, index, host, len(slots))
    assert sector.generation == generation
    assert list(sector.slots) == slots


@settings(max_examples=examples(300))
@given(request_sectors(), st.data())
def test_any_single_corrupted_byte_is_detected(
    case: tuple[int, int, int, int, list[Request | None]], data: st.DataObject
) -> None:
    sector_size, index, host, generation, slots = case
    raw = bytearray(encode_sector(Kind.REQUEST, sector_size, index, host, generation, slots))
    pos = data.draw(st.integers(0, sector_size - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    if not any(raw):
        return  # became the all-zero (empty) sector: impossible with a non-zero magic
    with pytest.raises(CorruptSector):
        decode_sector(bytes(raw), Kind.REQUEST, index, host, len(slots))


@settings(max_examples=examples(300))
@given(SECTOR_SIZES, st.data())
def test_torn_sector_is_old_new_or_detected(sector_size: int, data: st.DataObject) -> None:
    """A sector write that stopped partway (a prefix of new bytes over old) never decodes as
    anything but the old or the new sector."""
    count = slots_per_sector(sector_size)
    old_slots = data.draw(st.lists(st.none() | requests(), min_size=count, max_size=count))
    new_slots = data.draw(st.lists(st.none() | requests(), min_size=count, max_size=count))
    old = encode_sector(Kind.REQUEST, sector_size, 0, 1, 5, old_slots)
    new = encode_sector(Kind.REQUEST, sector_size, 0, 1, 6, new_slots)
    cut = data.draw(st.integers(1, sector_size - 1))
    torn = new[:cut] + old[cut:]
    try:
        sector = decode_sector(torn, Kind.REQUEST, 0, 1)
    except CorruptSector:
        return
    assert (sector.generation, list(sector.slots)) in ((5, old_slots), (6, new_slots))


def test_sector_of_another_host_or_kind_is_rejected() -> None:
    data = encode_sector(Kind.REQUEST, 512, 2, 5, 1, [Request(1, "vg", "lv", 10)])
    with pytest.raises(CorruptSector, match="layout mismatch"):
        decode_sector(data, Kind.REQUEST, 2, 6)
    with pytest.raises(CorruptSector, match="bad magic"):
        decode_sector(data, Kind.REPLY, 2, 5)


def test_malformed_slot_with_good_checksum_is_reported_not_dropped() -> None:
    raw = bytearray(encode_request(Request(9, "vg", "lv", 10)))
    raw[16:21] = b"vg\xfflv"  # non-ASCII name
    assert decode_request(bytes(raw)) == MalformedSlot(9, "volume name is not ASCII")
    raw = bytearray(encode_request(Request(9, "vg", "lv", 10)))
    raw[18] = ord("_")  # "vg_lv": no separator
    assert isinstance(decode_request(bytes(raw)), MalformedSlot)


# Layout.


@given(SECTOR_SIZES, st.integers(1, 2000), st.integers(0, 64).map(lambda n: n * 4096))
def test_layout_regions_do_not_overlap(sector_size: int, max_hosts: int, base: int) -> None:
    layout = MailboxLayout(base, sector_size, max_hosts)
    assert layout.ring_bytes == max_hosts * sector_size
    assert layout.request_base == base + layout.ring_bytes
    assert layout.ring_offset(1) == base
    assert layout.ring_offset(max_hosts) + sector_size == layout.request_base
    assert layout.request_offset(max_hosts) + layout.request_box_bytes == layout.reply_base
    assert layout.reply_offset(max_hosts) + layout.reply_box_bytes == layout.inuse_base
    assert layout.inuse_offset(max_hosts) + layout.inuse_record_bytes == layout.summary_base
    assert layout.summary_offset(max_hosts) + sector_size == layout.intent_offset
    assert layout.intent_offset + 4096 == layout.end  # the SPM's intent record
    for offset in (layout.request_base, layout.reply_base, layout.inuse_base,
                   layout.summary_base, layout.intent_offset, layout.end):
        assert offset % sector_size == 0
    # Every slot lives in exactly one request sector (0 = ring) and one reply sector.
    requests = [s for i in range(layout.request_sectors) for s in layout.request_sector_slots(i)]
    assert requests == list(range(SLOTS_PER_HOST)) and SLOTS_PER_HOST >= 63
    assert all(layout.request_slot_sector(s) == i for i in range(layout.request_sectors)
               for s in layout.request_sector_slots(i))
    replies = [s for i in range(layout.reply_sectors) for s in layout.reply_sector_slots(i)]
    assert replies == list(range(SLOTS_PER_HOST))
    assert all(layout.reply_slot_sector(s) == i for i in range(layout.reply_sectors)
               for s in layout.reply_sector_slots(i))
    assert len(layout.request_sector_slots(0)) == layout.head_slots >= 4


@settings(deadline=None, max_examples=examples(50))
@given(SECTOR_SIZES, st.integers(1, 2000))
def test_every_sector_has_one_writer(sector_size: int, max_hosts: int) -> None:
    """Host h writes its ring sector and its request box, the SPM the reply boxes: no two
    writers share a sector."""
    layout = MailboxLayout(0, sector_size, max_hosts)
    ranges = []
    for host in range(1, max_hosts + 1):
        ranges.append((layout.ring_offset(host), layout.ring_offset(host) + sector_size))
        ranges.append((layout.request_offset(host), layout.request_offset(host) +
                       layout.request_box_bytes))
        ranges.append((layout.inuse_offset(host), layout.inuse_offset(host) +
                       layout.inuse_record_bytes))
    ranges.append((layout.reply_base, layout.inuse_base))
    ranges.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:],
                                                                     strict=False))
    assert all(start % sector_size == 0 and end % sector_size == 0 for start, end in ranges)


@given(SECTOR_SIZES, st.integers(1, 2000), gens,
       st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFFFFFF), st.data())
def test_ring_sector_round_trip(sector_size: int, host: int, generation: int, count: int,
                                box_seq: int, data: st.DataObject) -> None:
    n = head_slots(sector_size)
    slots = tuple(data.draw(st.lists(st.none() | requests(), min_size=n, max_size=n)))
    raw = encode_ring(sector_size, Ring(host, generation, count, box_seq, slots))
    assert len(raw) == sector_size
    assert decode_ring(raw, host) == Ring(host, generation, count, box_seq, slots)


@settings(max_examples=examples(300))
@given(SECTOR_SIZES, st.integers(1, 0xFFFFFFFF), st.integers(1, 1 << 40), st.data())
def test_corrupt_ring_sector_is_detected(sector_size: int, generation: int, count: int,
                                         data: st.DataObject) -> None:
    raw = bytearray(encode_ring(sector_size, Ring(7, generation, count)))
    pos = data.draw(st.integers(0, sector_size - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptSector):
        decode_ring(bytes(raw), 7)


def test_ring_sector_of_another_host_and_zero_sector() -> None:
    with pytest.raises(CorruptSector, match="layout mismatch"):
        decode_ring(encode_ring(512, Ring(3, 1, 1)), 4)
    assert decode_ring(bytes(4096), 9) == Ring(9, 0, 0, 0, (None,) * head_slots(4096))
    assert head_slots(512) == 4 and head_slots(4096) == 33
    with pytest.raises(CorruptSector, match="bad magic"):
        decode_ring(encode_sector(Kind.REQUEST, 512, 0, 3, 1, []), 3)


def test_layout_rejects_bad_geometry() -> None:
    with pytest.raises(LayoutError):
        MailboxLayout(100, 512, 10)
    with pytest.raises(LayoutError):
        MailboxLayout(0, 1024, 10)
    layout = MailboxLayout(0, 512, 10)
    with pytest.raises(LayoutError):
        layout.request_offset(11)
    with pytest.raises(LayoutError):
        layout.check_fits(layout.end - 512)


def test_sizes_of_the_area() -> None:
    """16 KiB per host with either sector size (the ring sector is the box's first sector),
    plus the 4 KiB in-use record and the one-sector summary record; and the SPM's 4 KiB
    intent record once."""
    for sector_size in (512, 4096):
        layout = MailboxLayout(0, sector_size, 2000)
        assert layout.reply_box_bytes == 8192
        assert layout.box_bytes == layout.request_box_bytes  # the name older callers use
        assert layout.ring_bytes + 2000 * layout.request_box_bytes == 2000 * 8192
        assert layout.total_bytes == 2000 * (16384 + 4096 + sector_size) + 4096
    assert MailboxLayout(0, 512, 250).ring_bytes == 128_000


@given(st.lists(st.integers(1, 2000), max_size=200), st.integers(1, 64))
def test_contiguous_runs_cover_each_host_once(hosts: list[int], max_run: int) -> None:
    runs = contiguous_runs(hosts, max_run)
    covered = [first + i for first, count in runs for i in range(count)]
    assert covered == sorted(set(hosts))
    assert all(1 <= count <= max_run for _, count in runs)


@given(st.floats(0, 1e6), st.floats(0.001, 1), st.floats(1, 10))
def test_reply_poll_interval_bounds(waited: float, base: float, maximum: float) -> None:
    interval = reply_poll_interval(waited, base, maximum)
    assert base <= interval <= maximum


@given(st.floats(0, 100), st.floats(0.01, 5), st.floats(5, 60))
def test_retry_delay_grows_to_the_cap(previous: float, initial: float, maximum: float) -> None:
    delay = next_retry_delay(previous, initial, maximum)
    assert delay <= maximum
    assert delay >= min(initial, maximum) or previous > 0


def test_local_rejection() -> None:
    assert local_rejection(VolumeRef("vg", "lv"), 1) is None
    rejected = local_rejection(VolumeRef("vg", "l" * 200), 1)
    assert rejected is not None and rejected.reason is ReasonCode.BAD_NAME
    rejected = local_rejection(VolumeRef("vg", "lv"), 0)
    assert rejected is not None and rejected.status is Status.REJECTED


@given(st.integers(0, HOST_GENERATION_LIMIT), st.booleans(), st.integers(1, 1 << 20),
       st.sets(st.integers(1, HOST_GENERATION_LIMIT), max_size=64))
def test_next_generation_is_new_and_never_zero(seen: int, unreadable: bool, jump: int,
                                               taken: set[int]) -> None:
    generation = after(seen, unreadable, jump, taken)
    assert 0 < generation <= HOST_GENERATION_LIMIT
    if seen + 1 + (jump if unreadable else 0) <= HOST_GENERATION_LIMIT:  # no wrap-around
        assert generation == seen + 1 + (jump if unreadable else 0) > seen
    else:  # started again from 1: no reply slot of ours carries it
        assert generation not in taken


@given(ids, st.integers(len(OPS), 255))
def test_an_unknown_op_is_malformed_never_acted_on(request_id: int, op: int) -> None:
    """Range-checked decode: an op this format does not know (an SPM older than the reduce
    check sees op 2 this way) is a MalformedSlot, answered REJECTED MALFORMED."""
    raw = REQUEST_SLOT.pack(request_id, 0, 7, op, 100, b"vg0/lv1")
    assert decode_request(raw) == MalformedSlot(request_id, f"unknown op {op}")
