"""The SPM's committed-space record: round trip, every field range-checked, and where it
lives (no byte shared with the leases, the VG record or the engine record)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.capacity import committed_record as cr
from autoextend.capacity import record
from autoextend.capacity.admission import VgCommitted
from autoextend.metadata_area import LEASE_AREA_SIZE

MiB = 1 << 20
names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_+.-]{0,63}", fullmatch=True)


@st.composite
def committed(draw: st.DrawFn) -> VgCommitted:
    volumes = draw(st.integers(0, cr.U32_MAX))
    return VgCommitted(draw(names), draw(st.integers(0, cr.MAX_SIZE)),
                       draw(st.integers(0, cr.MAX_SIZE)), volumes,
                       draw(st.integers(0, volumes)))


@given(st.lists(committed(), max_size=45, unique_by=lambda v: v.vg), st.integers(1, 2000),
       st.integers(0, cr.MAX_SIZE), st.integers(0, cr.MAX_SIZE), st.sampled_from([512, 4096]))
def test_round_trip(vgs: list[VgCommitted], host: int, seq: int, when: int,
                    sector: int) -> None:
    data = cr.encode(cr.CommittedRecord(host, seq, when, tuple(vgs)), sector)
    assert len(data) == sector
    rec = cr.decode(data)
    assert rec is not None
    assert (rec.host_id, rec.seq, rec.published_ms) == (host, seq, when)
    assert rec.vgs == tuple(sorted(vgs, key=lambda v: v.vg)[: cr.capacity(sector)])


def test_geometry_matches_the_vg_record() -> None:
    """Every VG the VG record carries has its committed figures here too."""
    for sector in (512, 4096):
        assert cr.capacity(sector) == record.capacity(sector)
    assert cr.capacity(512) == 5 and cr.capacity(4096) == 42
    assert cr.decode(bytes(512)) is None and cr.decode(bytes(4096)) is None


@pytest.mark.parametrize("sector", [512, 4096])
def test_the_record_shares_no_byte_with_any_other(sector: int) -> None:
    from autoextend.lease import engine_record
    from autoextend.lease.layout import LeaseLayout, max_hosts_limit

    area = 7 * MiB
    native = LeaseLayout(area, sector, max_hosts_limit(sector))
    ours = (cr.record_offset(area, sector), cr.record_offset(area, sector) + sector)
    vg_record = record.record_offset(area, sector)
    engine = engine_record.record_offset(area)
    assert native.dblock_offset(native.max_hosts) + sector <= ours[0]
    assert area + 2 * MiB <= ours[0]  # sanlock's lockspace and resource end at +2 MiB
    assert ours[1] <= vg_record and vg_record + sector <= engine
    assert engine + sector <= area + LEASE_AREA_SIZE
    assert ours[0] % sector == 0


def resealed(data: bytearray) -> bytes:
    struct.pack_into("<I", data, cr.CRC_OFFSET, 0)
    struct.pack_into("<I", data, cr.CRC_OFFSET, zlib.crc32(data))
    return bytes(data)


GOOD = cr.encode(cr.CommittedRecord(3, 7, 1_700_000_000_000, (
    VgCommitted("gold", 512 * MiB, 1500 * MiB, 4, 1),)), 512)


@pytest.mark.parametrize(("offset", "fmt", "value", "why"), [
    (0, "4s", b"AXCP", "magic"),
    (4, "B", 2, "version"),
    (5, "B", 6, "entries do not fit"),
    (200, "B", 1, "bytes after"),
    (6, "H", 1, "reserved"),
    (8, "I", 0, "host id"),
    (8, "I", 2001, "host id"),
    (16, "Q", 1 << 63, "seq"),
    (24, "Q", 1 << 63, "time"),
    (32, "B", 0, "entry 0"),
    (32, "B", 65, "entry 0"),
    (33, "B", 1, "entry 0"),
    (40, "4s", b"g/ld", "not a valid VG name"),
    (40, "4s", b"\xffold", "ASCII"),
    (104, "Q", 1 << 63, "out of range"),
    (112, "Q", 1 << 63, "out of range"),
    (124, "I", 5, "more unknown volumes"),
])
def test_every_field_is_range_checked(offset: int, fmt: str, value: object, why: str) -> None:
    assert cr.decode(GOOD) is not None
    data = bytearray(GOOD)
    struct.pack_into("<" + fmt, data, offset, value)
    with pytest.raises(cr.BadCommittedRecord, match=why):
        cr.decode(resealed(data))


def test_bad_checksum_duplicates_and_the_vg_record_are_refused() -> None:
    data = bytearray(GOOD)
    data[100] ^= 1
    with pytest.raises(cr.BadCommittedRecord, match="checksum"):
        cr.decode(bytes(data))
    two = cr.encode(cr.CommittedRecord(1, 1, 0, (VgCommitted("a", 2, 1, 1, 0),
                                                 VgCommitted("b", 2, 1, 1, 0))), 512)
    data = bytearray(two)
    data[40] = ord("b")
    with pytest.raises(cr.BadCommittedRecord, match="twice"):
        cr.decode(resealed(data))
    with pytest.raises(cr.BadCommittedRecord, match="magic"):  # its neighbour is not it
        cr.decode(record.encode(record.VgRecord(1, 1, ()), 512))
    with pytest.raises(cr.BadCommittedRecord, match="one sector"):
        cr.decode(GOOD[:256])


def test_encode_refuses_what_no_decoder_accepts() -> None:
    for bad in (VgCommitted("vg", -1, 0, 0, 0), VgCommitted("vg", 1, 0, 1, 2),
                VgCommitted("bad/name", 1, 0, 0, 0), VgCommitted("vg", 1, 0, 1 << 32, 0)):
        with pytest.raises(ValueError):
            cr.encode(cr.CommittedRecord(1, 1, 0, (bad,)), 512)
    with pytest.raises(ValueError, match="out of range"):
        cr.encode(cr.CommittedRecord(0, 1, 0, ()), 512)
