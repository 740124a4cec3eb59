"""The SPM's intent record (``spm/intent.py``): round trip, range checks, garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.spm import intent
from autoextend.spm.errors import CorruptSector
from autoextend.spm.sealing import seal
from autoextend.spm.wire import OP_REDUCE

SECTOR_SIZES = st.sampled_from([512, 4096])
INTENTS = st.builds(intent.Intent, st.integers(0, (1 << 64) - 1), st.integers(1, 0xFFFF),
                    st.integers(1, (1 << 32) - 1), st.integers(0, 0xFF))


@given(SECTOR_SIZES, st.frozensets(INTENTS, max_size=intent.MAX_INTENTS))
def test_round_trip(sector_size: int, intents: frozenset[intent.Intent]) -> None:
    data = intent.encode(intents, sector_size)
    assert len(data) % sector_size == 0 and len(data) <= intent.RECORD_BYTES
    assert intent.decode(data + b"\0" * (intent.RECORD_BYTES - len(data))) == intents


@given(st.binary(min_size=16, max_size=600))
def test_garbage_is_corrupt_or_empty_never_a_crash(data: bytes) -> None:
    try:
        got = intent.decode(data)
    except CorruptSector as exc:
        assert exc.reason
    else:
        assert got == frozenset() and not any(data[:16])


def test_a_flipped_bit_is_corrupt() -> None:
    data = bytearray(intent.encode([intent.intent("vg/lv", OP_REDUCE, 3, 7)], 512))
    data[20] ^= 1
    with pytest.raises(CorruptSector, match="checksum"):
        intent.decode(bytes(data))


def test_all_zero_is_no_intent_and_names_finds_the_volume() -> None:
    assert intent.decode(b"\0" * 512) == frozenset()
    one = intent.intent("vg/lv", OP_REDUCE, 3, 7)
    got = intent.decode(intent.encode([one, intent.intent("vg/other", OP_REDUCE, 1, 2)], 512))
    assert intent.names(got, "vg/lv") == one and intent.names(got, "vg/none") is None
    assert "request 7 of host 3" in one.text()


def test_out_of_range_is_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        intent.encode([intent.Intent(k, 1, 1, 1) for k in range(intent.MAX_INTENTS + 1)], 512)
    with pytest.raises(ValueError, match="out of range"):
        intent.encode([intent.Intent(1, 0, 1, 1)], 512)


def test_a_zero_request_id_on_storage_is_corrupt() -> None:
    data = bytearray(intent.encode([intent.Intent(5, 1, 1, 1)], 512))
    struct.pack_into("<I", data, 16 + 12, 0)
    seal(data, intent.CRC_OFFSET, 32)
    with pytest.raises(CorruptSector, match="entry 0"):
        intent.decode(bytes(data))
