"""The records' checksum (``spm/sealing.py``): the CRC-32 of the bytes with the field zeroed."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.spm import sealing
from tests.hypo import examples


@st.composite
def records(draw: st.DrawFn) -> tuple[bytearray, int, int]:
    data = bytearray(draw(st.binary(min_size=8, max_size=600)))
    field_at = draw(st.integers(0, len(data) - 4))
    end = draw(st.integers(field_at + 4, len(data)))
    return data, field_at, end


@given(records())
@settings(deadline=None, max_examples=examples(200))
def test_the_sealed_field_holds_the_crc_of_the_bytes_with_it_zeroed(
    rec: tuple[bytearray, int, int],
) -> None:
    data, field_at, end = rec
    sealing.seal(data, field_at, end)
    zeroed = bytearray(data[:end])
    struct.pack_into("<I", zeroed, field_at, 0)
    assert struct.unpack_from("<I", data, field_at)[0] == zlib.crc32(zeroed)
    assert sealing.crc_of(data, field_at, end) == zlib.crc32(zeroed)


@given(records(), st.data())
@settings(deadline=None, max_examples=examples(200))
def test_any_flipped_byte_before_the_end_breaks_it_and_after_the_end_does_not(
    rec: tuple[bytearray, int, int], data_: st.DataObject,
) -> None:
    data, field_at, end = rec
    sealing.seal(data, field_at, end)
    sealed = sealing.crc_of(data, field_at, end)
    at = data_.draw(st.integers(0, len(data) - 1).filter(
        lambda i: not field_at <= i < field_at + 4))
    data[at] ^= 1
    assert (sealing.crc_of(data, field_at, end) == sealed) == (at >= end)
