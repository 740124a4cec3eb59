"""The in-use record (``spm/inuse.py``): round trip, garbage, range checks, the judgement,
and the layout's regions (no two overlap, at 512 and 4096 byte sectors)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.spm import handoff, intent, inuse
from autoextend.spm.errors import CorruptSector
from autoextend.spm.inuse import InUseRecord, decode, encode, judge, make_record
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.sealing import seal
from tests.hypo import examples

SECTOR_SIZES = st.sampled_from([512, 4096])
U64 = st.integers(0, (1 << 64) - 1)


@st.composite
def records(draw: st.DrawFn, host: int | None = None) -> InUseRecord:
    devices = draw(st.dictionaries(U64, st.integers(1, inuse.MAX_DEVICE_SIZE),
                                   max_size=inuse.MAX_DEVICES))
    hashes = draw(st.frozensets(U64, max_size=inuse.max_volumes(0, len(devices))))
    return InUseRecord(
        host if host is not None else draw(st.integers(1, 2000)),
        draw(st.integers(0, inuse.MAX_RECORD_GENERATION)),
        draw(st.integers(1, (1 << 64) - 1)), draw(U64), hashes, draw(st.booleans()),
        devices=devices)


@settings(max_examples=examples(200))
@given(SECTOR_SIZES, records())
def test_round_trip(sector_size: int, rec: InUseRecord) -> None:
    raw = encode(rec, sector_size)
    assert len(raw) % sector_size == 0 and len(raw) <= inuse.RECORD_BYTES
    assert decode(raw, rec.host_id) == rec
    # Read back as the whole record with an old tail beyond the used prefix: the same.
    assert decode(raw + b"\xff" * (inuse.RECORD_BYTES - len(raw)), rec.host_id) == rec


@settings(max_examples=examples(300))
@given(SECTOR_SIZES, records(host=5), st.data())
def test_a_flipped_byte_is_detected(sector_size: int, rec: InUseRecord,
                                    data: st.DataObject) -> None:
    raw = bytearray(encode(rec, sector_size))
    used = inuse.HEAD_SIZE + 8 * len(rec.hashes) + inuse.views_bytes(len(rec.devices))
    pos = data.draw(st.integers(0, used - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        got = decode(bytes(raw), 5)
    except CorruptSector:
        return
    # Only a flip that zeroes the whole head reads as "never published".
    assert got is None and not any(raw[: inuse.HEAD_SIZE])


@settings(max_examples=examples(300))
@given(st.binary(min_size=0, max_size=4096), st.integers(1, 2000))
def test_garbage_never_crashes(data: bytes, host: int) -> None:
    try:
        rec = decode(data, host)
    except CorruptSector:
        return
    assert rec is None or (rec.host_id == host and rec.seq >= 1
                           and len(rec.hashes) <= inuse.MAX_VOLUMES)


def _raw(host: int = 3, *, version: int = 1, flags: int = 0, count: int = 0,
         reserved: int = 0, generation: int = 1, seq: int = 1,
         hashes: tuple[int, ...] = (), devices: int | None = None,
         views: tuple[tuple[int, int], ...] = ()) -> bytes:
    """A checksum-valid record with any field values (hostile writer); ``devices``: the
    device views' count field after the hashes (no claims), then ``views``."""
    buf = bytearray(inuse.RECORD_BYTES)
    inuse.HEAD.pack_into(buf, 0, inuse.MAGIC, version, flags, count, host, reserved, 0,
                         generation, seq, 0)
    struct.pack_into(f"<{len(hashes)}Q", buf, inuse.HEAD_SIZE, *hashes)
    length = inuse.HEAD_SIZE + 8 * min(count, inuse.MAX_VOLUMES)
    if devices is not None:
        at = inuse.HEAD_SIZE + 8 * len(hashes)
        struct.pack_into("<Q", buf, at, devices)
        for i, view in enumerate(views):
            inuse.DEVICE.pack_into(buf, at + 8 + 16 * i, *view)
        length = min(inuse.RECORD_BYTES,
                     at + inuse.views_bytes(min(max(devices, 1), inuse.MAX_DEVICES)))
    seal(buf, inuse.CRC_OFFSET, length)
    return bytes(buf)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"version": 2}, "version"),
    ({"flags": 4}, "flags"),
    ({"flags": 2, "devices": 0}, "device views count 0"),
    ({"flags": 2, "devices": inuse.MAX_DEVICES + 1}, "device views count"),
    ({"flags": 2, "devices": 1, "count": inuse.max_volumes(0, 1) + 1,
      "hashes": tuple(range(inuse.max_volumes(0, 1) + 1))}, "do not fit"),
    ({"flags": 2, "devices": 2, "views": ((6, 1), (5, 1))}, "ascending"),
    ({"flags": 2, "devices": 1, "views": ((6, 0),)}, "size"),
    ({"flags": 2, "devices": 1, "views": ((6, 1 << 63),)}, "size"),
    ({"reserved": handoff.MAX_CLAIMS + 1}, "claims count"),
    ({"reserved": 1}, "checksum"),
    ({"seq": 0}, "seq 0"),
    ({"generation": 1 << 63}, "generation"),
    ({"count": inuse.MAX_VOLUMES + 1}, "count"),
    ({"count": 2, "hashes": (5, 5)}, "ascending"),
    ({"count": 2, "hashes": (6, 5)}, "ascending"),
    ({"host": 4}, "layout mismatch"),
])
def test_checksum_valid_records_are_range_checked(fields: dict[str, int],
                                                  problem: str) -> None:
    raw = _raw(**fields)  # type: ignore[arg-type]
    with pytest.raises(CorruptSector, match=problem):
        decode(raw, 3)


def test_device_views_take_room_from_the_volumes_and_round_trip() -> None:
    views = {f"uuid-{i}": (i + 1) << 30 for i in range(inuse.MAX_DEVICES)}
    names = [f"vg/lv{i}" for i in range(inuse.MAX_VOLUMES)]
    rec = make_record(2, 7, 1, 0, names, devices=views)
    assert rec.overflow and len(rec.hashes) == inuse.max_volumes(0, inuse.MAX_DEVICES)
    assert rec.sees("UUID-3") == rec.sees("uuid3") == 4 << 30 and rec.sees("other") is None
    raw = encode(rec, 4096)
    assert len(raw) == 4096 and raw[5] & inuse.FLAG_DEVICES
    assert decode(raw, 2) == rec
    assert not encode(make_record(2, 7, 1, 0, names[:3]), 512)[5] & inuse.FLAG_DEVICES
    with pytest.raises(ValueError):
        make_record(2, 7, 1, 0, [], devices={**views, "one-more": 1})
    with pytest.raises(ValueError):
        make_record(2, 7, 1, 0, [], devices={"u": 0})


def test_limits_accepted() -> None:
    hashes = tuple(range(inuse.MAX_VOLUMES))
    rec = decode(_raw(count=inuse.MAX_VOLUMES, hashes=hashes, flags=1,
                      generation=inuse.MAX_RECORD_GENERATION, seq=(1 << 64) - 1), 3)
    assert rec is not None and rec.overflow and len(rec.hashes) == inuse.MAX_VOLUMES
    assert decode(bytes(4096), 3) is None


def test_overflow_lists_every_volume() -> None:
    names = [f"vg/lv{i}" for i in range(inuse.MAX_VOLUMES + 1)]
    rec = make_record(2, 7, 1, 0, names)
    assert rec.overflow and len(rec.hashes) == inuse.MAX_VOLUMES
    assert rec.lists("vg/never-listed")
    assert decode(encode(rec, 512), 2) == rec
    small = make_record(2, 7, 1, 0, names[:3])
    assert not small.overflow and small.lists("vg/lv1") and not small.lists("vg/lv9")


# The judgement.

LIVE = {1: ("live", 11), 2: ("live", 22)}


def _rec(host: int, seq: int, names: list[str], generation: int | None = None) -> InUseRecord:
    return make_record(host, generation if generation is not None else host * 11, seq, 0,
                       names)


def test_judge_refuses_naming_the_host_that_lists_it() -> None:
    before = {1: _rec(1, 5, []), 2: _rec(2, 9, ["vg/a"])}
    after = {1: _rec(1, 7, []), 2: _rec(2, 11, ["vg/a"])}
    why = judge("vg/a", after, LIVE, before)
    assert why is not None and "host 2" in why and "in use" in why
    assert judge("vg/b", after, LIVE, before) is None


def test_judge_stale_unreadable_missing_and_generation() -> None:
    before = {1: _rec(1, 5, []), 2: _rec(2, 9, [])}
    stale = judge("vg/a", {1: _rec(1, 7, []), 2: _rec(2, 10, [])}, LIVE, before)
    assert stale is not None and "host 2" in stale and "stale" in stale
    bad = judge("vg/a", {1: _rec(1, 7, []), 2: "bad checksum"}, LIVE, before)
    assert bad is not None and "host 2" in bad and "unreadable" in bad
    missing = judge("vg/a", {1: _rec(1, 7, []), 2: None}, LIVE, before)
    assert missing is not None and "host 2" in missing
    other_run = judge("vg/a", {1: _rec(1, 7, []), 2: _rec(2, 12, [], generation=5)}, LIVE,
                      before)
    assert other_run is not None and "another run" in other_run
    first_unreadable = judge("vg/a", {1: _rec(1, 7, []), 2: _rec(2, 12, [])}, LIVE,
                             {1: before[1], 2: "torn"})
    assert first_unreadable is not None and "host 2" in first_unreadable


def test_judge_skips_dead_and_free_hosts_but_not_failing_ones() -> None:
    after = {1: _rec(1, 7, []), 2: _rec(2, 11, ["vg/a"])}
    before = {1: _rec(1, 5, []), 2: _rec(2, 9, ["vg/a"])}
    assert judge("vg/a", after, {1: ("live", 11), 2: ("dead", 22)}, before) is None
    assert judge("vg/a", {1: after[1]}, {1: ("live", 11), 2: ("free", 0)}, before) is None
    failing = judge("vg/a", after, {1: ("live", 11), 2: ("fail", 22)}, before)
    assert failing is not None and "host 2" in failing


@settings(max_examples=examples(200))
@given(st.dictionaries(st.integers(1, 6), st.sampled_from(
    ["live", "fail", "dead", "free", "unknown"]), min_size=1),
    st.dictionaries(st.integers(1, 6), st.booleans()), st.integers(0, 3))
def test_judge_never_passes_a_listed_volume_on_a_host_not_gone(
        states: dict[int, str], listed: dict[int, bool], advance: int) -> None:
    """Whatever the states and freshness: if a host that is not FREE/DEAD lists the volume,
    the reduce is refused; if it passes, no such host lists it and each one moved by 2."""
    lease = {h: (s, h) for h, s in states.items()}
    before: dict[int, InUseRecord | None | str] = {
        h: _rec(h, 10, ["vg/x"] if listed.get(h) else [], generation=h) for h in states}
    after: dict[int, InUseRecord | None | str] = {
        h: _rec(h, 10 + advance, ["vg/x"] if listed.get(h) else [], generation=h)
        for h in states}
    why = judge("vg/x", after, lease, before)
    holders = [h for h, s in states.items() if s not in inuse.HOST_GONE and listed.get(h)]
    if holders:
        assert why is not None
    if why is None:
        assert advance >= 2 or all(s in inuse.HOST_GONE for s in states.values())


# The layout's regions.


@settings(deadline=None, max_examples=examples(40))
@given(SECTOR_SIZES, st.integers(1, 300))
def test_no_two_regions_overlap(sector_size: int, max_hosts: int) -> None:
    layout = MailboxLayout(4096, sector_size, max_hosts)
    regions = sorted(layout.regions(), key=lambda r: r[1])
    for (a, _, a_end), (b, b_start, _) in zip(regions, regions[1:], strict=False):
        assert a_end <= b_start, f"{a} overlaps {b}"
    assert regions[0][1] == layout.base and regions[-1][2] == layout.end
    assert all(s % sector_size == 0 and e % sector_size == 0 for _, s, e in regions)


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_no_two_regions_overlap_at_the_largest_pool(sector_size: int) -> None:
    layout = MailboxLayout(0, sector_size, 2000)
    regions = sorted(layout.regions(), key=lambda r: r[1])
    assert all(a[2] <= b[1] for a, b in zip(regions, regions[1:], strict=False))
    assert layout.inuse_offset(2000) + inuse.RECORD_BYTES == layout.summary_base
    assert layout.summary_offset(2000) + sector_size == layout.intent_offset  # issue 33
    assert layout.intent_offset + intent.RECORD_BYTES == layout.end  # the SPM's intents


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_claims_and_device_views_together_round_trip(sector_size: int) -> None:
    claims = [handoff.PauseClaim(handoff.Kind.CLAIM, 10 + i, 20 + i, 1, 500 + i)
              for i in range(3)]
    rec = make_record(4, 9, 2, 0, ["vg/a", "vg/b"], claims, {"pv-1": 1 << 30, "pv-2": 5})
    assert len(rec.claims) == 3 and rec.sees("pv2") == 5
    raw = encode(rec, sector_size)
    assert decode(raw, 4) == rec
    assert decode(raw + b"\xff" * (inuse.RECORD_BYTES - len(raw)), 4) == rec
    # The flag is checksummed with the views: a record that lost it is refused.
    old = bytearray(raw)
    old[5] &= ~inuse.FLAG_DEVICES
    with pytest.raises(CorruptSector):
        decode(bytes(old), 4)
