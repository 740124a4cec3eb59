"""The SPM's VG record: round trip, every field range-checked, and the published source."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.capacity import record
from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import VgFigures
from autoextend.capacity.published import FiguresUnavailable, PublishedSource
from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.metadata_area import LEASE_AREA_SIZE
from autoextend.sectorfakes import MemoryStorage

MiB = 1 << 20
names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)


@st.composite
def figures(draw: st.DrawFn) -> VgFigures:
    size = draw(st.integers(0, record.MAX_SIZE))
    return VgFigures(draw(names), size, draw(st.integers(0, size)))


@given(st.lists(figures(), max_size=6, unique_by=lambda f: f.vg), st.integers(1, 2000),
       st.integers(0, record.MAX_SIZE), st.sampled_from([512, 4096]))
def test_round_trip(figs: list[VgFigures], host: int, seq: int, sector: int) -> None:
    data = record.encode(record.VgRecord(host, seq, tuple(figs)), sector)
    assert len(data) == sector
    rec = record.decode(data)
    assert rec is not None
    assert rec.host_id == host and rec.seq == seq
    kept = sorted(figs, key=lambda f: f.vg)[: record.capacity(sector)]
    assert rec.figures == tuple(kept)


def test_geometry_and_zero_sector() -> None:
    assert record.capacity(512) == 5 and record.capacity(4096) == 42
    assert record.record_offset(1 << 20, 512) == (1 << 20) + LEASE_AREA_SIZE - 8192


@pytest.mark.parametrize("sector", [512, 4096])
def test_the_record_shares_no_byte_with_the_leases_or_the_engine_record(sector: int) -> None:
    """The lease area's tail holds two one-sector records; neither may overlap the other or
    the last paxos dblock at the most hosts the sector size allows."""
    from autoextend.lease import engine_record
    from autoextend.lease.layout import LeaseLayout, max_hosts_limit

    native = LeaseLayout(0, sector, max_hosts_limit(sector))
    ours = (record.record_offset(0, sector), record.record_offset(0, sector) + sector)
    engine = (engine_record.record_offset(0), engine_record.record_offset(0) + sector)
    assert native.dblock_offset(native.max_hosts) + sector <= ours[0]
    assert ours[1] <= engine[0] and engine[1] <= LEASE_AREA_SIZE
    assert record.decode(bytes(512)) is None


def resealed(data: bytearray) -> bytes:
    struct.pack_into("<I", data, record.CRC_OFFSET, 0)
    struct.pack_into("<I", data, record.CRC_OFFSET, zlib.crc32(data))
    return bytes(data)


GOOD = record.encode(record.VgRecord(3, 7, (VgFigures("gold", 512 * MiB, 100 * MiB),)), 512)


@pytest.mark.parametrize(("offset", "fmt", "value", "why"), [
    (0, "4s", b"XXXX", "magic"),
    (4, "B", 2, "version"),
    (5, "B", 6, "entries do not fit"),
    (200, "B", 1, "bytes after"),
    (6, "H", 1, "reserved"),
    (8, "I", 0, "host id"),
    (8, "I", 2001, "host id"),
    (16, "Q", 1 << 63, "seq"),
    (24, "Q", 1, "reserved"),
    (32, "B", 0, "entry 0"),
    (32, "B", 65, "entry 0"),
    (33, "B", 1, "entry 0"),
    (40, "4s", b"g/ld", "not a valid VG name"),
    (40, "4s", b"\xffold", "ASCII"),
    (104, "Q", 1 << 63, "out of range"),
    (112, "Q", 513 * MiB, "free past size"),
    (120, "Q", 1, "reserved"),
])
def test_every_field_is_range_checked(offset: int, fmt: str, value: object, why: str) -> None:
    data = bytearray(GOOD)
    struct.pack_into("<" + fmt, data, offset, value)
    with pytest.raises(record.BadRecord, match=why):
        record.decode(resealed(data))


def test_bad_checksum_and_duplicate() -> None:
    data = bytearray(GOOD)
    data[100] ^= 1
    with pytest.raises(record.BadRecord, match="checksum"):
        record.decode(bytes(data))
    two = record.encode(record.VgRecord(1, 1, (VgFigures("a", 2, 1), VgFigures("b", 2, 1))),
                        512)
    data = bytearray(two)
    data[40] = ord("b")
    with pytest.raises(record.BadRecord, match="twice"):
        record.decode(resealed(data))


class Local:
    def __init__(self) -> None:
        self.figs = [VgFigures("gold", 512 * MiB, 200 * MiB)]

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        return [f for f in self.figs if f.vg in vgs]


class Term:
    def __init__(self) -> None:
        self.valid = True

    def check(self) -> None:
        if not self.valid:
            raise NotSpmError("term over")


async def test_spm_publishes_and_hosts_read_until_stale() -> None:
    storage = MemoryStorage(8 * MiB, 512)
    clock = ManualClock()
    settings = CapacitySettings(publish_interval_s=5.0)
    term = Term()
    spm_agent = SimpleNamespace(storage=storage, lease=SimpleNamespace(term=term), host_id=1)
    host_agent = SimpleNamespace(storage=storage, lease=SimpleNamespace(term=None), host_id=2)
    local = Local()
    spm = PublishedSource(spm_agent, local, settings, 0, clock)
    host = PublishedSource(host_agent, Local(), settings, 0, clock)
    with pytest.raises(FiguresUnavailable, match="no SPM has published"):
        await host.vg_figures(["gold"])
    assert await spm.vg_figures(["gold"]) == local.figs
    assert await host.vg_figures(["gold"]) == local.figs
    await spm.vg_figures(["gold"])
    assert spm.writes == 1  # unchanged and young: no write
    local.figs = [VgFigures("gold", 512 * MiB, 150 * MiB)]
    await spm.vg_figures(["gold"])
    assert spm.writes == 2 and (await host.vg_figures(["gold"]))[0].free == 150 * MiB
    clock.advance(5.0)
    await spm.vg_figures(["gold"])  # the heartbeat
    assert spm.writes == 3
    await host.vg_figures(["gold"])
    clock.advance(16.0)  # the SPM is gone: no write for more than 3 x 5 s
    with pytest.raises(FiguresUnavailable, match="has not changed"):
        await host.vg_figures(["gold"])
    term.valid = False
    with pytest.raises(NotSpmError):
        await spm.vg_figures(["gold"])  # a term that ended writes nothing
    assert spm.writes == 3
    await storage.write(record.record_offset(0, 512), b"\x01" * 512)
    with pytest.raises(FiguresUnavailable, match="unusable"):
        await host.vg_figures(["gold"])
    assert host.bad_records == 1
