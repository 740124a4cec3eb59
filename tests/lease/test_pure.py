"""Hypothesis tests of the pure parts: timeouts, record round trips, layout, liveness."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.lease.errors import RecordError
from autoextend.lease.format import (
    FLAG_RELEASED,
    MAX_BALLOT,
    MAX_GENERATION,
    MAX_HOST_ID,
    MAX_IO_TIMEOUT_MS,
    MAX_LVER,
    MAX_WATCHDOG_MS,
    Dblock,
    DeltaRecord,
    LeaderRecord,
    pack_dblock,
    pack_delta,
    pack_leader,
    unpack_dblock,
    unpack_delta,
    unpack_leader,
)
from autoextend.lease.layout import (
    LEASE_AREA_SIZE,
    MAILBOX_OFFSET,
    LeaseLayout,
    max_hosts_limit,
)
from autoextend.lease.liveness import HostMonitor, HostState
from autoextend.lease.timeouts import lease_timeouts

u64 = st.integers(0, 2**64 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
sector_sizes = st.sampled_from([512, 4096])


@given(st.floats(0.001, 600), st.floats(0.001, 3600), st.floats(0, 60))
def test_timeouts_invariants(t: float, w: float, poll: float) -> None:
    to = lease_timeouts(t, w, poll)
    assert to.renewal_interval < to.renewal_warn < to.lease_expiry
    assert to.lease_expiry + w <= to.host_dead + 1e-9      # holder stops W before takeover
    assert to.takeover_min == to.host_dead
    assert to.takeover_min < to.takeover_max_fast <= to.takeover_max_worst
    assert to.delta_held_wait >= to.host_dead
    assert 0 < to.backoff_max <= 1.0 and to.renewal_retry <= 0.5
    # Three renewal attempts, each taking its whole I/O budget (2T), fit in the expiry.
    assert to.renewal_interval + 3 * 2 * t <= to.lease_expiry + 1e-9
    assert to.acquire_poll == (poll or t)


def test_sanlock_defaults() -> None:
    to = lease_timeouts(10.0, 60.0)
    assert (to.renewal_interval, to.lease_expiry, to.host_dead) == (20.0, 80.0, 140.0)
    with pytest.raises(ValueError):
        lease_timeouts(0.0, 60.0)


hosts = st.integers(1, MAX_HOST_ID)
gens = st.integers(0, MAX_GENERATION)


@given(hosts, gens.filter(bool), u64, st.text(max_size=16).filter(lambda n: "\0" not in n),
       st.integers(0, MAX_IO_TIMEOUT_MS), st.integers(0, MAX_WATCHDOG_MS), sector_sizes, hosts)
def test_delta_round_trip(host: int, gen: int, ts: int, name: str, io: int, wd: int,
                          ss: int, mh: int) -> None:
    rec = DeltaRecord(host, gen, ts, name, io, wd, ss, mh)
    data = pack_delta(rec, ss)
    assert len(data) == ss
    assert unpack_delta(data, 0, host) == rec


@given(st.integers(0, MAX_HOST_ID), gens, st.integers(1, MAX_LVER - 1), u64,
       st.integers(0, MAX_HOST_ID), st.integers(0, MAX_IO_TIMEOUT_MS), sector_sizes, hosts,
       st.sampled_from([0, FLAG_RELEASED]))
def test_leader_round_trip(owner: int, gen: int, lver: int, ts: int, wid: int, io: int,
                           ss: int, mh: int, flags: int) -> None:
    rec = LeaderRecord(owner, gen, lver, ts, wid, io, ss, mh, flags)
    assert unpack_leader(pack_leader(rec, ss)) == rec


@given(hosts, st.integers(0, MAX_LVER - 1), st.integers(0, MAX_BALLOT), st.data(), hosts, gens,
       st.sampled_from([0, FLAG_RELEASED]), sector_sizes)
def test_dblock_round_trip(host: int, lver: int, mbal: int, data: st.DataObject, inp: int,
                           gen: int, flags: int, ss: int) -> None:
    bal = data.draw(st.integers(0, mbal))
    rec = Dblock(host, lver, mbal, bal, inp, gen, flags)
    assert unpack_dblock(pack_dblock(rec, ss), 0, host) == rec


@given(st.integers(0, 60), st.integers(1, 255))
def test_any_corruption_is_an_error_never_free(pos: int, flip: int) -> None:
    free = DeltaRecord(1, 0, 0, "", 10000, 0, 512, 8)
    data = bytearray(pack_delta(free, 512))
    data[pos] ^= flip
    with pytest.raises(RecordError):
        unpack_delta(bytes(data))


@given(st.binary(min_size=512, max_size=512))
def test_garbage_never_decodes(garbage: bytes) -> None:
    for unpack in (unpack_delta, unpack_leader, unpack_dblock):
        with pytest.raises(RecordError):
            unpack(garbage)


def test_zero_sector_is_not_free() -> None:
    with pytest.raises(RecordError, match="magic"):
        unpack_leader(bytes(512))
    assert zlib.crc32(b"") == 0


@given(sector_sizes, st.data())
def test_layout_fits_before_mailbox(ss: int, data: st.DataObject) -> None:
    hosts = data.draw(st.integers(1, max_hosts_limit(ss)))
    layout = LeaseLayout(data.draw(st.integers(0, 16)) << 20, ss, hosts)
    assert layout.delta_start + layout.delta_length <= layout.paxos_start
    assert layout.dblock_offset(hosts) + ss <= layout.base + LEASE_AREA_SIZE
    assert layout.end == layout.base + MAILBOX_OFFSET
    for off in (layout.delta_offset(hosts), layout.leader_offset, layout.dblock_offset(1)):
        assert off % ss == 0
    assert layout.paxos_start % (1 << 20) == 0


def test_layout_limits() -> None:
    assert max_hosts_limit(512) == 2000 and max_hosts_limit(4096) == 500
    with pytest.raises(ValueError):
        LeaseLayout(0, 4096, 501)
    with pytest.raises(ValueError):
        LeaseLayout(4096, 512, 10)


def _raw(ts: int) -> bytes:
    return pack_delta(DeltaRecord(2, 1, ts, "b", 1000, 0, 512, 8), 512)


def test_monitor_unknown_live_fail_dead() -> None:
    mon = HostMonitor(host_fail=8.0, host_dead=18.0)
    mon.observe(2, _raw(5), 512, issued=0.0, done=0.1)
    assert mon.status(2, 1.0).state is HostState.UNKNOWN
    mon.observe(2, _raw(6), 512, issued=2.0, done=2.1)
    assert mon.status(2, 3.0).state is HostState.LIVE
    assert mon.status(2, 10.2).state is HostState.FAIL
    assert not mon.is_dead(2) and mon.needs_confirm(2, 20.2)
    mon.observe(2, _raw(6), 512, issued=20.0, done=20.1)   # issued too early: not proof
    assert not mon.is_dead(2)
    mon.observe(2, _raw(6), 512, issued=20.2, done=20.3)
    assert mon.is_dead(2) and mon.status(2, 20.3).state is HostState.DEAD


@given(st.lists(st.floats(0.01, 5.0), min_size=1, max_size=20))
def test_unknown_never_dead_before_host_dead(gaps: list[float]) -> None:
    """A host never seen changing is DEAD only once host_dead passed since we first saw it."""
    mon = HostMonitor(host_fail=8.0, host_dead=18.0)
    now = 0.0
    mon.observe(2, _raw(7), 512, issued=now, done=now)
    for gap in gaps:
        now += gap
        mon.observe(2, _raw(7), 512, issued=now, done=now)
        assert mon.is_dead(2) == (now >= 18.0)


def test_bad_record_counted_and_ages() -> None:
    mon = HostMonitor(host_fail=8.0, host_dead=18.0)
    junk = b"\x01" * 512
    mon.observe(3, junk, 1024, issued=0.0, done=0.0)
    assert mon.bad_records == 1 and mon.status(3, 1.0).state is HostState.BAD
    mon.observe(3, junk, 1024, issued=19.0, done=19.0)
    assert mon.is_dead(3)
