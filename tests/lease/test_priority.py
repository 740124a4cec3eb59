"""SPM priority (``[lease] spm_priority``): the delta-record extension, the yield rule, the
config, and LeaseService on an in-memory area (0 / 5 / never, a reload)."""

from __future__ import annotations

import random
import struct
import zlib

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from autoextend import reload as reload_mod
from autoextend import settings as settings_mod
from autoextend.clock import MonotonicClock
from autoextend.lab.waiting import until
from autoextend.lease.config import LeaseSettings
from autoextend.lease.format import (
    DELTA_EXT_OFFSET,
    MAX_GENERATION,
    MAX_HOST_ID,
    DeltaRecord,
    delta_extension,
    pack_delta,
    unpack_delta,
)
from autoextend.lease.priority import (
    DEFAULT_PRIORITY,
    MAX_LEVELS,
    NEVER,
    POLLS_PER_LEVEL,
    Priority,
    levels_above,
    parse_priority,
    yield_window,
)
from autoextend.lease.service import LeaseService

from .helpers import STEADY, memory_area, settings

priorities = st.one_of(st.integers(0, 100), st.just(NEVER))
sector_sizes = st.sampled_from([512, 4096])

# The delta record as the release before the extension decodes it: the fixed fields, their
# CRC, version 1 and flags 0; nothing after the CRC is read.
_OLD = struct.Struct("<IHHHHIQQII64s")


def old_release_decode(data: bytes) -> tuple[object, ...]:
    body = data[: _OLD.size]
    (crc,) = struct.unpack_from("<I", data, _OLD.size)
    fields = _OLD.unpack(body)
    assert fields[0] == 0x44454C54 and fields[1] == 1 and fields[5] == 0
    assert crc == zlib.crc32(body)
    return fields


def ext_crc(sector: bytes | bytearray, fields: bytes) -> int:
    """As written down in format.py: the record's fields (without their CRC), then the
    extension's fields."""
    return zlib.crc32(bytes(sector[: _OLD.size]) + fields)


def record(priority: Priority | None, ss: int = 512, host: int = 3) -> DeltaRecord:
    return DeltaRecord(host, 7, 123456, f"host{host}", 10_000, 60_000, ss, 8,
                       spm_priority=priority)


# ---- the on-disk extension -----------------------------------------------------------------


@given(st.integers(1, MAX_HOST_ID), st.integers(1, MAX_GENERATION), st.integers(0, 2**64 - 1),
       st.one_of(st.none(), priorities), sector_sizes)
def test_delta_round_trip_with_the_priority(host: int, gen: int, ts: int,
                                            priority: Priority | None, ss: int) -> None:
    rec = DeltaRecord(host, gen, ts, "h", 1000, 2000, ss, MAX_HOST_ID, spm_priority=priority)
    data = pack_delta(rec, ss)
    assert len(data) == ss
    assert unpack_delta(data, 0, host) == rec


@given(st.one_of(st.none(), priorities), sector_sizes)
def test_an_older_release_reads_the_same_record(priority: Priority | None, ss: int) -> None:
    """The extension lives after the record's CRC: the old decoder sees the very fields (and
    the very bytes it decodes) of a record without one."""
    with_ext = pack_delta(record(priority, ss), ss)
    without = pack_delta(record(None, ss), ss)
    assert with_ext[:DELTA_EXT_OFFSET] == without[:DELTA_EXT_OFFSET]
    assert old_release_decode(with_ext) == old_release_decode(without)
    # and an older release's record (no extension) is read here without a priority
    assert unpack_delta(without, 0, 3).spm_priority is None


@given(st.binary(min_size=1, max_size=60), st.integers(0, 40))
def test_any_extension_bytes_leave_the_record_readable(junk: bytes, at: int) -> None:
    """Whatever follows the record's CRC, the record decodes; the priority is either the one
    written or none (a damaged extension is absent, never a wrong value or an error)."""
    good = bytearray(pack_delta(record(5), 512))
    start = DELTA_EXT_OFFSET + at
    good[start:start + len(junk)] = junk
    rec = unpack_delta(bytes(good), 0, 3)
    assert rec.host_name == "host3" and rec.generation == 7
    assert rec.spm_priority in (5, None)
    assert delta_extension(bytes(good)) == rec.spm_priority


def test_a_damaged_extension_is_absent_and_a_longer_one_is_read() -> None:
    data = bytearray(pack_delta(record(NEVER), 512))
    assert unpack_delta(bytes(data), 0, 3).spm_priority == NEVER
    flipped = bytearray(data)
    flipped[DELTA_EXT_OFFSET + 6] ^= 1  # the priority: the extension's CRC no longer holds
    assert unpack_delta(bytes(flipped), 0, 3).spm_priority is None
    # A later release appends 4 bytes of fields: the priority is still read.
    fields = struct.pack("<IHH", 0x54584544, 6, 42) + b"\x01\x02\x03\x04"
    longer = bytes(data[:DELTA_EXT_OFFSET]) + fields + struct.pack("<I", ext_crc(data, fields))
    longer += bytes(512 - len(longer))
    assert unpack_delta(longer, 0, 3).spm_priority == 42
    # A priority out of range on disk is no priority.
    fields = struct.pack("<IHH", 0x54584544, 2, 101)
    out_of_range = bytes(data[:DELTA_EXT_OFFSET]) + fields + struct.pack(
        "<I", ext_crc(data, fields))
    assert unpack_delta(out_of_range + bytes(512 - len(out_of_range)), 0, 3).spm_priority is None
    # The extension is bound to its record: moved under another record, it does not check out.
    other = bytearray(pack_delta(record(None, host=4), 512))
    other[DELTA_EXT_OFFSET:DELTA_EXT_OFFSET + 12] = data[DELTA_EXT_OFFSET:DELTA_EXT_OFFSET + 12]
    assert unpack_delta(bytes(other), 0, 4).spm_priority is None


# ---- the yield rule (pure) -----------------------------------------------------------------

peer = st.tuples(st.booleans(), st.one_of(st.none(), priorities))


@given(priorities, st.lists(peer, max_size=12), st.floats(0.001, 600.0))
def test_the_yield_is_bounded_and_only_for_higher_contending_peers(
    own: Priority, peers: list[tuple[bool, Priority | None]], poll: float
) -> None:
    window = yield_window(own, peers, poll)
    assert 0.0 <= window <= MAX_LEVELS * POLLS_PER_LEVEL * poll
    higher = {DEFAULT_PRIORITY if p is None else p for ok, p in peers if ok}
    higher = {p for p in higher if p != NEVER and own != NEVER and int(p) > int(own)}
    assert levels_above(own, peers) == len(higher)
    assert (window > 0) == bool(higher)
    # peers that may not contend (FAIL, DEAD, free, unreadable) never make a host wait
    assert yield_window(own, [(False, p) for _, p in peers], poll) == 0.0
    # a never peer never does either
    assert yield_window(own, [(ok, NEVER) for ok, _ in peers], poll) == 0.0


def test_the_yield_levels() -> None:
    assert yield_window(0, [(True, 5)], 1.0) == 2.0
    assert yield_window(0, [(True, 5), (True, 5), (True, 3)], 1.0) == 4.0
    assert yield_window(0, [(True, p) for p in range(1, 20)], 1.0) == 6.0  # at most 3 levels
    assert yield_window(5, [(True, 0), (True, 5), (True, NEVER)], 1.0) == 0.0
    assert yield_window(10, [(True, None)], 1.0) == 2.0  # an older release: the default, 50
    assert yield_window(60, [(True, None)], 1.0) == 0.0


# ---- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "error"), [
    (101, "must be 0..100"), (-1, "must be 0..100"), ("high", 'must be "never" or a whole'),
    (True, 'must be "never" or a whole'), (5.0, 'must be "never" or a whole'),
    ("5", 'must be "never" or a whole'),
])
def test_bad_priorities_get_a_clear_error(value: object, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        LeaseSettings.model_validate({"spm_priority": value})


def test_the_priority_setting() -> None:
    assert LeaseSettings().spm_priority == DEFAULT_PRIORITY == 50
    assert LeaseSettings(spm_priority="never").spm_priority == NEVER
    assert LeaseSettings(spm_priority=0).spm_priority == 0
    assert parse_priority(100) == 100
    with pytest.raises(ValidationError, match="sanlock has no priority"):
        LeaseSettings(engine="sanlock", spm_priority=5)
    assert LeaseSettings(engine="sanlock", spm_priority="never").spm_priority == NEVER


def test_a_reload_applies_the_priority_and_no_other_lease_key() -> None:
    old = settings_mod.from_mapping({"lease": {"host_id": 1, "spm_priority": 5}})
    new = settings_mod.from_mapping({"lease": {"host_id": 2, "spm_priority": "never"}})
    plan = reload_mod.plan(old, new)
    assert plan.applied == ("lease.spm_priority",)
    assert plan.needs_restart == ("lease.host_id",)
    assert plan.effective.lease.spm_priority == NEVER and plan.effective.lease.host_id == 1


# ---- LeaseService on an in-memory area -----------------------------------------------------


# Real time is the subject (hold-offs of whole seconds, about 15 s): stage 1 of make test.
@pytest.mark.slow
@pytest.mark.cpu
async def test_five_wins_the_free_election_and_never_never_contends() -> None:
    storage = await memory_area()
    clock = MonotonicClock()
    # A poll of 1 s: the 5 host sees the free lease within one poll, the 0 host yields two
    # (a margin of a poll against a loaded machine's stalls).
    hosts = {p: LeaseService(storage, settings(h, spm_priority=p, acquire_poll_s=1.0,
                                               **STEADY), clock, rng=random.Random(h))
             for h, p in ((1, 0), (2, 5), (3, NEVER))}
    winners: list[int] = []
    go = anyio.Event()

    async def candidate(lease: LeaseService) -> None:
        await go.wait()
        while True:
            async with lease.spm() as term:
                winners.append(term.host_id)
                # Hold the role past a hold-off (4 polls): the host that stepped down before
                # is back in the contest. Time is the subject.
                await anyio.sleep(4.5)
                lease.step_down()
                await anyio.sleep_forever()

    low, five, never = hosts[0], hosts[5], hosts[NEVER]
    async with low.joined(), five.joined(), never.joined(), anyio.create_task_group() as tg:
        for lease in hosts.values():
            tg.start_soon(candidate, lease)
        # every host has seen the others' records (and priorities) before the contest
        await until(lambda: all(len(h.monitor.peers) >= 3 for h in hosts.values()), 30,
                    "every host watched the others", describe=lambda: winners)
        go.set()
        await until(lambda: len(winners) >= 3, 90, "three elections", describe=lambda: winners)
        tg.cancel_scope.cancel()
    # 5 wins the free election; after its step-down the 0 host takes over (5 is held off);
    # after the 0 host's, 5 again; the never host never.
    assert winners[:3] == [2, 1, 2]
    assert low.stats.yielded >= 1 and five.stats.yielded == 0
    assert never.stats.acquisitions == 0 and never.paxos.stats.ballots == 0


async def test_a_reload_makes_a_never_host_contend_and_publishes_it() -> None:
    storage = await memory_area()
    clock = MonotonicClock()
    lease = LeaseService(storage, settings(1, spm_priority=NEVER, **STEADY), clock,
                         rng=random.Random(1))
    watcher = LeaseService(storage, settings(2, spm_priority=NEVER, **STEADY), clock,
                           rng=random.Random(2))
    async with lease.joined(), watcher.joined():
        with anyio.move_on_after(4 * STEADY["io_timeout_s"]) as scope:
            async with lease.spm():
                raise AssertionError("a never host took the role")
        assert scope.cancelled_caught and lease.paxos.stats.ballots == 0

        def seen() -> Priority | None:
            rec = watcher.monitor.record(1)
            return rec.spm_priority if rec is not None else None

        await until(lambda: seen() == NEVER, 30, "the never priority published",
                    describe=seen)
        got: list[int] = []

        async def contend() -> None:
            async with lease.spm() as term:
                got.append(term.lver)

        async with anyio.create_task_group() as tg:
            tg.start_soon(contend)
            await anyio.sleep(STEADY["io_timeout_s"])  # waiting on never: time is the subject
            assert got == []
            lease.set_spm_priority(7)  # the reload
        assert got == [1]
        await until(lambda: seen() == 7, 30, "the new priority published", describe=seen)
        with pytest.raises(ValueError, match="must be 0..100"):
            lease.set_spm_priority(400)


def test_the_sanlock_engine_takes_never_or_the_default_only() -> None:
    """sanlock has no priority: a reload may switch between never and the default (the
    engine's spm() waits while never), a number is refused with the reason."""
    from autoextend.lease.sanlock_engine import SanlockEngine

    engine = SanlockEngine(LeaseSettings(engine="sanlock", host_id=1, path="/nonexistent",
                                         spm_priority=NEVER), 512, MonotonicClock())
    def current() -> Priority:
        return engine.spm_priority

    assert current() == NEVER
    with pytest.raises(ValueError, match="needs the native engine"):
        engine.set_spm_priority(5)
    assert current() == NEVER
    engine.set_spm_priority(DEFAULT_PRIORITY)
    assert current() == DEFAULT_PRIORITY
