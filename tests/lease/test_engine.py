"""The lease engine boundary without a daemon: the engine record (what makes a mixed pool
refuse to start), the sanlock binding's struct layout, the config rules, the sanlock record
parser, and that both engines satisfy the one Protocol."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError, StartupError
from autoextend.lease import engine_record as er
from autoextend.lease import sanlock_lib as sl
from autoextend.lease.config import LeaseSettings
from autoextend.lease.engine import LeaseEngine, make_engine
from autoextend.lease.layout import LEASE_AREA_SIZE, LeaseLayout, max_hosts_limit
from autoextend.lease.sanlock_area import DELTA_MAGIC, parse_leader
from autoextend.lease.sanlock_engine import SanlockEngine, SanlockTerm, sanlock_location
from autoextend.lease.service import LeaseService
from autoextend.sectorfakes import MemoryStorage

MiB = 1 << 20
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=48)


@given(engine=st.sampled_from(er.ENGINES), lockspace=names,
       location=st.text(max_size=100).filter(lambda s: "\0" not in s),
       sector=st.sampled_from([512, 4096]))
def test_engine_record_round_trips(engine: str, lockspace: str, location: str,
                                   sector: int) -> None:
    record = er.EngineRecord(engine, lockspace, location)
    raw = er.pack(record, sector)
    assert len(raw) == sector
    assert er.unpack(raw) == record


@given(st.integers(0, 319), st.integers(1, 255))
def test_engine_record_with_a_flipped_byte_is_unreadable(index: int, xor: int) -> None:
    raw = bytearray(er.pack(er.EngineRecord("sanlock", "ls", ""), 512))
    raw[index] ^= xor
    with pytest.raises(er.BadEngineRecord):
        er.unpack(bytes(raw))


def test_engine_record_sits_where_neither_engine_writes() -> None:
    for sector in (512, 4096):
        native = LeaseLayout(0, sector, max_hosts_limit(sector))
        assert native.dblock_offset(native.max_hosts) + sector <= er.record_offset(0)
        assert native.delta_offset(native.max_hosts) + sector <= native.paxos_start
    assert 2 * MiB <= er.record_offset(0)  # sanlock: lockspace and resource, 1 MiB each
    assert er.record_offset(0) + er.RECORD_SPAN == LEASE_AREA_SIZE
    assert er.record_offset(0) % 4096 == 0


def test_mismatch_rules() -> None:
    native = er.EngineRecord("native")
    sanlock = er.EngineRecord("sanlock", "autoextend", "")
    assert er.mismatch(None, native) is None  # an area formatted before the record
    assert er.mismatch(native, native) is None and er.mismatch(sanlock, sanlock) is None
    assert "not formatted for" in (er.mismatch(None, sanlock) or "")
    assert 'formatted for lease.engine = "sanlock"' in (er.mismatch(sanlock, native) or "")
    assert 'formatted for lease.engine = "native"' in (er.mismatch(native, sanlock) or "")
    other = er.EngineRecord("sanlock", "other", "")
    assert "lockspace 'other'" in (er.mismatch(other, sanlock) or "")


async def test_check_engine_refuses_a_mixed_pool_in_one_line() -> None:
    storage = MemoryStorage(8 * MiB)
    sanlock_cfg = LeaseSettings(path="/dev/pool", host_id=1, engine="sanlock",
                                io_timeout_s=2.0)
    native_cfg = LeaseSettings(path="/dev/pool", host_id=2)
    await er.check_engine(storage, native_cfg)  # no record: a native area of old
    with pytest.raises(StartupError, match="not formatted for"):
        await er.check_engine(storage, sanlock_cfg)
    await er.write_record(storage, sanlock_cfg)
    await er.check_engine(storage, sanlock_cfg)
    with pytest.raises(StartupError) as info:
        await er.check_engine(storage, native_cfg)
    assert "\n" not in str(info.value)
    assert 'formatted for lease.engine = "sanlock"' in str(info.value)
    await storage.write(er.record_offset(0), b"\x01" * 512)
    with pytest.raises(StartupError, match="unreadable engine record"):
        await er.check_engine(storage, sanlock_cfg)


def test_sanlock_structs_match_the_c_layout() -> None:
    # sanlock.h: sanlk_disk 1024 + 8 + 4 + 4; sanlk_lockspace 48 + 8 + 4 (+4 pad) + disk;
    # sanlk_resource 48 + 48 + 8 + 8 + 4 + 4 + 4 + 4 + disks; sanlk_host 8 + 8 + 8 + 4 + 4.
    assert ctypes.sizeof(sl._Disk) == 1040
    assert sl._Lockspace.host_id_disk.offset == 64
    assert ctypes.sizeof(sl._Lockspace) == 64 + 1040
    assert sl._Resource.disks.offset == 128
    assert ctypes.sizeof(sl._Resource) == 128 + 1040
    assert ctypes.sizeof(sl._Host) == 32
    res = sl.resource("ls", "SPM", "/dev/x", MiB, 4096)
    assert res.flags == sl.RES_ALIGN1M | sl.RES_SECTOR4K and res.num_disks == 1
    with pytest.raises(ValueError):
        sl.lockspace("x" * 49, 1, "/dev/x", 0, 512)
    with pytest.raises(ValueError):
        sl.lockspace("ls", 1, "/dev/a:b", 0, 512)


def test_sanlock_errors_name_the_call_and_the_reason() -> None:
    err = sl.SanlockError("acquire", sl.ACQUIRE_IDLIVE)
    assert err.busy and "acquire" in str(err) and "-243" in str(err)
    err = sl.SanlockError("add_lockspace", -2)
    assert not err.busy and "No such file or directory" in str(err)


def test_sanlock_config_rules() -> None:
    with pytest.raises(ValidationError, match="whole number of seconds"):
        LeaseSettings(engine="sanlock", io_timeout_s=0.5)
    with pytest.raises(ValidationError, match="<= 250"):
        LeaseSettings(engine="sanlock", sector_size=4096, max_hosts=500, host_id=300)
    with pytest.raises(ValidationError):
        LeaseSettings(engine="sanlock", sanlock_lockspace="a:b")
    with pytest.raises(ValidationError):
        LeaseSettings(engine="raft")  # type: ignore[arg-type]
    cfg = LeaseSettings(engine="sanlock", path="/dev/p", offset=3 * MiB)
    assert sanlock_location(cfg) == ("/dev/p", 3 * MiB, 4 * MiB)
    cfg = LeaseSettings(engine="sanlock", path="/dev/p", sanlock_path="/dev/ids")
    assert sanlock_location(cfg) == ("/dev/ids", 0, MiB)


def test_parse_sanlock_leader() -> None:
    raw = struct.pack("<IIIIQQQQQ48s48sQQIHHQQQ", DELTA_MAGIC, 0x30001, 0x10, 512, 0, 2000,
                      3, 7, 0, b"LS", b"host-3", 12345, 0, 0, 0, 2, 3, 7, 12345)
    rec = parse_leader(raw + bytes(512 - len(raw)))
    assert rec["owner_id"] == 3 and rec["owner_generation"] == 7
    assert rec["resource_name"] == "host-3" and rec["timestamp"] == 12345
    assert rec["io_timeout"] == 2 and rec["space_name"] == "LS"


def test_both_engines_are_lease_engines() -> None:
    clock = ManualClock()
    storage = MemoryStorage(8 * MiB)
    native: LeaseEngine = make_engine(LeaseSettings(path="/p", host_id=1), storage, clock)
    sanlock: LeaseEngine = make_engine(
        LeaseSettings(path="/p", host_id=1, engine="sanlock", io_timeout_s=1.0), storage, clock)
    assert type(native).__name__ == "LeaseService"
    assert isinstance(sanlock, SanlockEngine)
    for engine in (native, sanlock):
        assert engine.term is None and engine.renewal_age() is None and not engine.held
        assert engine.host_states() == {} and engine.current_spm() is None


def test_sanlock_term_ends_at_its_expiry_without_io() -> None:
    clock = ManualClock(100.0)
    engine = SanlockEngine(LeaseSettings(path="/p", host_id=1, engine="sanlock",
                                         io_timeout_s=1.0), 512, clock)
    engine.expiry = 108.0
    term = SanlockTerm(engine, 5)
    term.check()
    assert term.valid
    clock.advance(8.0)
    with pytest.raises(NotSpmError, match="may have expired"):
        term.check()
    engine.expiry = 200.0
    term.end("stepped down")
    with pytest.raises(NotSpmError, match="stepped down"):
        term.check()


def test_make_engine_gives_both_engines_the_checks_it_is_given() -> None:
    """The checks reach the engine, and through it every term it makes; all on unless a
    caller (only a test's negative control) passes one off (autoextend/checks.py)."""
    clock = ManualClock()
    storage = MemoryStorage(8 * MiB)
    off = Checks(term_check=False)
    for settings in (LeaseSettings(path="/p", host_id=1),
                     LeaseSettings(path="/p", host_id=1, engine="sanlock", io_timeout_s=1.0)):
        default, mutant = make_engine(settings, storage, clock), make_engine(
            settings, storage, clock, off)
        assert isinstance(default, LeaseService | SanlockEngine)
        assert isinstance(mutant, LeaseService | SanlockEngine)
        assert default.checks == ALL_ON and mutant.checks is off
