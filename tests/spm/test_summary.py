"""The hosts' summary records (issue 33): the codec (``spm/summary.py``) and the publisher
with its write budget (``spm/summarypub.py``)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.clock import ManualClock
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm import sealing, summary
from autoextend.spm.errors import CorruptSector
from autoextend.spm.summary import HostFacts, PausedVm
from autoextend.spm.summarypub import SummaryPublisher, WriteBudget
from tests.hypo import examples

from .fakes import FAST, Watched, layout_for

SECTOR_SIZES = st.sampled_from([512, 4096])
NAMES = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=90)
FACTS = st.builds(
    HostFacts,
    vms=st.integers(0, 1 << 33), drives=st.integers(0, 1 << 33),
    extends_hour=st.integers(0, 1 << 33),
    last_extend_ms=st.none() | st.integers(-5, 1 << 33),
    paused=st.lists(st.builds(PausedVm, NAMES, st.sampled_from(sorted(summary.REASON_CODES))),
                    max_size=30).map(tuple),
    version=st.text(max_size=50))
PEERS = st.dictionaries(st.integers(1, 2000),
                        st.tuples(st.sampled_from(["live", "free", "fail", "dead", "unknown",
                                                   "bad"]), st.integers(0, (1 << 62))),
                        max_size=40)


@settings(deadline=None, max_examples=examples(300))
@given(SECTOR_SIZES, st.integers(1, 2000), st.sampled_from(["native", "sanlock"]),
       st.integers(0, (1 << 63) - 1), st.integers(1, (1 << 64) - 1), FACTS, PEERS)
def test_round_trip(sector_size: int, host: int, engine: str, generation: int, seq: int,
                    facts: HostFacts, peers: dict[int, tuple[str, int]]) -> None:
    rec = summary.make_record(host, engine, generation, seq, 1_700_000_000_000_000, facts,
                              peers)
    raw = summary.encode(rec, sector_size)
    assert len(raw) == sector_size and not any(raw[summary.RECORD_BYTES:])
    assert summary.decode(raw, host) == rec
    # What the record cuts, it says it cut; the counts stay exact.
    assert rec.paused_total == min(len(facts.paused), summary.U32_MAX)
    assert rec.paused_cut == (len(rec.paused) < rec.paused_total)
    assert rec.vms >= rec.paused_total
    listed = {h for h, (s, _) in peers.items() if h != host and s in summary.PEER_CODES}
    assert {p.host_id for p in rec.peers} <= listed
    assert rec.peers_cut == (len(listed) > summary.MAX_PEERS)
    if len(facts.paused) <= 3:
        assert [p.reason for p in rec.paused] == [p.reason for p in facts.paused]


@settings(deadline=None, max_examples=examples(300))
@given(st.binary(min_size=512, max_size=512))
def test_garbage_is_rejected_or_never_published(data: bytes) -> None:
    try:
        rec = summary.decode(data, 5)
    except CorruptSector as err:
        assert err.reason
        return
    assert rec is None and not any(data)


def _valid() -> bytes:
    facts = HostFacts(vms=3, drives=4, extends_hour=12, last_extend_ms=412,
                      paused=(PausedVm("vm-a", "enospc"), PausedVm("vm-b", "user")),
                      version="0.1.0")
    rec = summary.make_record(5, "native", 77, 9, 123, facts, {2: ("dead", 1 << 40 | 7),
                                                                3: ("live", 1)})
    return summary.encode(rec, 512)


@settings(deadline=None, max_examples=examples(300))
@given(st.integers(0, 511), st.integers(1, 255))
def test_any_flipped_byte_is_rejected(at: int, xor: int) -> None:
    raw = bytearray(_valid())
    raw[at] ^= xor
    with pytest.raises(CorruptSector):
        summary.decode(bytes(raw), 5)


def _resealed(raw: bytearray) -> bytes:
    sealing.seal(raw, summary.CRC_OFFSET, summary.RECORD_BYTES)
    return bytes(raw)


@pytest.mark.parametrize(("at", "value", "reason"), [
    (4, b"\x02", "unsupported version"),
    (5, b"\x07", "unknown engine"),
    (6, b"\x06\x00", "record says host 6"),
    (12, b"\x04", "unknown flags"),
    (14, b"\x11", "counts out of range"),          # 17 peers > MAX_PEERS
    (16, b"\xff" * 8, "generation out of range"),
    (24, b"\x00" * 8, "seq 0"),
    (56, b"\x09\x00\x00\x00", "counts out of range"),  # paused_total > vms
    (60, b"\x01", "reserved"),
    (96, b"\x05\x00", "bad peer entry"),            # the writer itself
    (98, b"\x01", "bad peer entry"),                # state 1 (live) is never listed
    (13, b"\x21", "bad version length"),
])
def test_checksum_valid_impossible_values_are_rejected(at: int, value: bytes,
                                                       reason: str) -> None:
    raw = bytearray(_valid())
    raw[at:at + len(value)] = value
    with pytest.raises(CorruptSector, match=reason):
        summary.decode(_resealed(raw), 5)


def test_a_bad_name_and_trailing_bytes_are_rejected() -> None:
    raw = bytearray(_valid())
    start = summary.HEAD_SIZE + summary.PEER_SIZE  # first paused entry
    raw[start + 2] = 0xFF  # not UTF-8
    with pytest.raises(CorruptSector, match="not UTF-8"):
        summary.decode(_resealed(raw), 5)
    raw = bytearray(_valid())
    raw[500] = 1
    with pytest.raises(CorruptSector, match="after the last entry"):
        summary.decode(_resealed(raw), 5)


def test_long_names_are_cut_at_a_character_boundary() -> None:
    facts = HostFacts(vms=40, paused=tuple(PausedVm("é" * 60 + str(i), "io-error")
                                           for i in range(40)))
    rec = summary.make_record(1, "native", 1, 1, 0, facts, {})
    assert rec.paused and rec.paused_cut and rec.paused_total == 40
    assert all(p.cut and len(p.vm.encode()) <= summary.NAME_MAX for p in rec.paused)
    assert summary.decode(summary.encode(rec, 512), 1) == rec


def test_the_budget_bounds_writes_in_any_window() -> None:
    """At most BURST + L / REFILL_S writes in any L seconds, whatever asks."""
    budget = WriteBudget()
    rng = random.Random(3)
    now, times = 0.0, []
    for _ in range(5000):
        now += rng.choice([0.01, 0.5, 1.0, 7.0, 40.0])
        if budget.take(now):
            times.append(now)
    for i, start in enumerate(times):
        for length in (10.0, 90.0, 600.0):
            n = sum(1 for t in times[i:] if t < start + length)
            assert n <= budget.burst + length / budget.refill_s + 1e-9, (start, length, n)
    assert len(times) / now < 0.1  # under one write per 10 s in the long run


async def test_publisher_writes_on_change_and_refreshes_slowly() -> None:
    layout = layout_for(FAST)
    storage = Watched(MemoryStorage(layout.end, 512))
    clock = ManualClock()
    facts = [HostFacts(vms=1, drives=1, version="0.1.0")]
    view = {3: ("live", 77), 2: ("dead", 5)}
    pub = SummaryPublisher(storage, layout, 3, "native", lambda: facts[0], lambda: view,
                           clock)
    await pub.start()
    assert await pub.look()
    raw = await storage.read(layout.summary_offset(3), 512)
    rec = summary.decode(raw, 3)
    assert rec is not None and rec.generation == 77 and rec.seq == 1
    assert [(p.host_id, p.state) for p in rec.peers] == [(2, "dead")]
    clock.advance(1.0)
    assert not await pub.look()                 # nothing changed
    facts[0] = HostFacts(vms=1, drives=2, version="0.1.0")
    assert await pub.look() and pub.writes == 2  # a change goes out (a token was left)
    for i in range(3):
        facts[0] = HostFacts(vms=1, drives=3 + i, version="0.1.0")
        clock.advance(1.0)
        await pub.look()
    assert pub.writes == 3                       # the burst is spent: changes wait
    clock.advance(15.0)
    assert await pub.look() and pub.writes == 4  # the latest content, one token later
    clock.advance(30.0)
    assert not await pub.look()
    clock.advance(31.0)
    assert await pub.look() and pub.writes == 5  # the slow refresh
    # Neighbours untouched; a restart continues the seq.
    assert summary.decode(await storage.read(layout.summary_offset(2), 512), 2) is None
    again = SummaryPublisher(storage, layout, 3, "native", lambda: facts[0], lambda: view,
                             clock)
    await again.start()
    assert again.seq == pub.seq
    storage.fail_writes = True
    clock.advance(100.0)
    assert not await again.look() and again.failures == 1


async def test_a_failing_source_writes_nothing() -> None:
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)

    def broken() -> HostFacts:
        raise RuntimeError("monitor not ready")

    pub = SummaryPublisher(storage, layout, 1, "sanlock", broken, dict, ManualClock())
    assert not await pub.look() and pub.failures == 1
    assert summary.decode(await storage.read(layout.summary_offset(1), 512), 1) is None


async def test_a_dead_peer_goes_out_while_extensions_spent_the_budget() -> None:
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    clock = ManualClock()
    n = [0]
    view: dict[int, tuple[str, int]] = {1: ("live", 7), 2: ("live", 9)}
    pub = SummaryPublisher(storage, layout, 1, "native",
                           lambda: HostFacts(extends_hour=n[0]), lambda: view, clock)
    for _ in range(5):           # an extension a second: the main bucket runs dry
        n[0] += 1
        clock.advance(1.0)
        await pub.look()
    assert pub.writes == 3
    view[2] = ("dead", 9)
    clock.advance(1.0)
    assert await pub.look()      # the peer bucket lets the news out
    rec = summary.decode(await storage.read(layout.summary_offset(1), 512), 1)
    assert rec is not None and [(p.host_id, p.state) for p in rec.peers] == [(2, "dead")]


@settings(deadline=None, max_examples=examples(30))
@given(st.lists(st.tuples(st.sampled_from([0.2, 1.0, 5.0, 30.0]), st.booleans(),
                          st.booleans()), min_size=50, max_size=400))
async def test_the_publisher_writes_at_most_5_plus_l_over_12(
        steps: list[tuple[float, bool, bool]]) -> None:
    """Whatever changes and when: in any L seconds at most 5 + L/12 writes."""
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    clock = ManualClock()
    n = [0]
    view: dict[int, tuple[str, int]] = {1: ("live", 7), 2: ("live", 9)}
    pub = SummaryPublisher(storage, layout, 1, "native",
                           lambda: HostFacts(extends_hour=n[0]), lambda: view, clock)
    times = []
    for dt, extend, flap in steps:
        clock.advance(dt)
        n[0] += extend
        if flap:
            view[2] = ("dead", 9) if view[2][0] == "live" else ("live", 9)
        if await pub.look():
            times.append(clock.now())
    for i, start in enumerate(times):
        for length in (1.0, 10.0, 60.0, 600.0):
            count = sum(1 for t in times[i:] if t < start + length)
            assert count <= 5 + length / 12 + 1e-9, (start, length, count)
