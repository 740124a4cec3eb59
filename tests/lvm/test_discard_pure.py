"""Which byte ranges a reduce or remove may discard (lvm/discard.py), over random layouts:
only extents the LV held before and that are free after, never another LV's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.lvm.discard import ByteRange, freed_ranges, split
from autoextend.lvm.errors import ReportFormatError
from autoextend.lvm.report import PvSegment, parse_pvsegs

EXTENT = 4 << 20
PE_START = 1 << 20


def layout(owners: list[str], pv: str = "/dev/pv0") -> tuple[PvSegment, ...]:
    """Run-length segments of a PV whose extent i belongs to owners[i] ("" free)."""
    segs: list[PvSegment] = []
    for i, owner in enumerate(owners):
        if segs and segs[-1].lv == owner and segs[-1].start + segs[-1].count == i:
            last = segs.pop()
            segs.append(PvSegment(pv, PE_START, last.start, last.count + 1, "vg", owner, EXTENT))
        else:
            segs.append(PvSegment(pv, PE_START, i, 1, "vg", owner, EXTENT))
    return tuple(segs)


def extents_of(ranges: list[ByteRange]) -> set[int]:
    out: set[int] = set()
    for r in ranges:
        assert (r.offset - PE_START) % EXTENT == 0 and r.length % EXTENT == 0
        first = (r.offset - PE_START) // EXTENT
        out.update(range(first, first + r.length // EXTENT))
    return out


owners = st.lists(st.sampled_from(["", "a", "b", "c"]), min_size=1, max_size=60)


@given(before=owners, data=st.data())
def test_only_what_the_lv_had_and_is_now_free(before: list[str], data: st.DataObject) -> None:
    # after: each of a's extents may be freed or kept; another LV may even have taken one
    # (which the SPM's lock forbids; the rule must still never discard it)
    after = [data.draw(st.sampled_from(["", "a", "c"])) if o == "a" else o for o in before]
    found = extents_of(freed_ranges(layout(before), layout(after), "a"))
    assert found == {i for i, (o, n) in enumerate(zip(before, after, strict=True))
                     if o == "a" and n == ""}


def test_runs_are_merged_and_byte_exact() -> None:
    ranges = freed_ranges(layout(["a", "a", "b", "a", "a", ""]),
                          layout(["a", "", "b", "", "", ""]), "a")
    assert ranges == [ByteRange("/dev/pv0", PE_START + EXTENT, EXTENT),
                      ByteRange("/dev/pv0", PE_START + 3 * EXTENT, 2 * EXTENT)]


def test_a_removed_lv_on_two_pvs() -> None:
    before = layout(["a", "b"], "/dev/pv0") + layout(["b", "a", "a"], "/dev/pv1")
    after = layout(["", "b"], "/dev/pv0") + layout(["b", "", ""], "/dev/pv1")
    assert freed_ranges(before, after, "a") == [
        ByteRange("/dev/pv0", PE_START, EXTENT),
        ByteRange("/dev/pv1", PE_START + EXTENT, 2 * EXTENT)]


@given(length=st.integers(1, 10_000), limit=st.integers(1, 1000))
def test_split_covers_exactly(length: int, limit: int) -> None:
    pieces = split(ByteRange("/d", 7, length), limit)
    assert sum(p.length for p in pieces) == length and all(0 < p.length <= limit for p in pieces)
    assert [p.offset for p in pieces] == list(range(7, 7 + length, limit))


def test_report_parser_refuses_garbage() -> None:
    good = ('{"report":[{"pvseg":[{"pv_name":"/dev/loop1","pe_start":"1048576","pvseg_start":"0",'
            '"pvseg_size":"2","vg_name":"v","lv_name":"a","vg_extent_size":"4194304"}]}]}')
    assert parse_pvsegs(good)[0] == PvSegment("/dev/loop1", 1 << 20, 0, 2, "v", "a", EXTENT)
    for bad in (good.replace('"2"', '"0"'), good.replace('"4194304"', '"x"'),
                good.replace("pvseg", "seg"), "[]"):
        with pytest.raises(ReportFormatError):
            parse_pvsegs(bad)
