"""Admission arithmetic (pure) and the autoextend.vsize tag."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.capacity.admission import (
    VgCommitted,
    VolumeVsize,
    admit,
    limit_of,
    pool_total,
    sum_committed,
)
from autoextend.lvm.vsize import BadVsizeTag, vsize_from_tags, vsize_tag

GiB = 1 << 30
sizes = st.integers(0, 1 << 50)
ratios = st.decimals(min_value="0.01", max_value="100", places=2).map(float)


@st.composite
def vgs(draw: st.DrawFn) -> VgCommitted:
    volumes = draw(st.integers(0, 10_000))
    return VgCommitted(draw(st.sampled_from(["a", "b", "gold"])), draw(sizes), draw(sizes),
                       volumes, draw(st.integers(0, volumes)))


@given(vgs(), st.integers(1, 1 << 50), ratios, st.booleans())
def test_admit_is_the_inequality(f: VgCommitted, new: int, ratio: float,
                                 allow: bool) -> None:
    a = admit(f, new, ratio, allow_unknown=allow)
    fits = Fraction(f.committed + new) <= Fraction(repr(ratio)) * f.size
    assert a.admit == (fits and f.size > 0 and (allow or f.unknown == 0))
    assert a.limit == limit_of(f.size, ratio) <= Fraction(repr(ratio)) * f.size < a.limit + 1
    assert a.room == max(0, a.limit - f.committed)


@given(vgs(), ratios)
def test_at_the_limit_admits_and_one_byte_more_refuses(f: VgCommitted, ratio: float) -> None:
    f = VgCommitted(f.vg, f.size, f.committed, f.volumes, 0)
    room = admit(f, 1, ratio).room
    if room == 0:
        assert not admit(f, 1, ratio).admit
        return
    assert admit(f, room, ratio).admit
    assert not admit(f, room + 1, ratio).admit
    if room > 1:
        assert admit(f, room - 1, ratio).admit


@given(vgs(), st.integers(1, 1 << 40), st.integers(1, 1 << 40), ratios)
def test_a_larger_disk_is_never_easier(f: VgCommitted, a: int, b: int, ratio: float) -> None:
    small, large = sorted((a, b))
    assert admit(f, large, ratio).admit <= admit(f, small, ratio).admit


def test_decimal_ratios_are_read_as_written() -> None:
    """1.1 x 10 GiB is 11 GiB exactly: at it admits, a byte over refuses (a binary float
    of 1.1 would move the limit)."""
    f = VgCommitted("vg", 10 * GiB, 10 * GiB, 3, 0)
    assert admit(f, GiB, 1.1).admit and not admit(f, GiB + 1, 1.1).admit
    f7 = VgCommitted("vg", 100, 0, 0, 0)
    assert admit(f7, 70, 0.7).admit  # 0.7 as a binary float is below 0.7


def test_unknown_volumes_refuse_unless_allowed_and_a_refusal_on_known_stands() -> None:
    f = VgCommitted("gold", 100 * GiB, 200 * GiB, 5, 2)
    a = admit(f, GiB, 4.0)
    assert not a.admit and "2 volume(s)" in a.reason and "unknown" in a.reason
    ok = admit(f, GiB, 4.0, allow_unknown=True)
    assert ok.admit and "not counted" in ok.reason
    assert not admit(f, 201 * GiB, 4.0, allow_unknown=True).admit
    assert "more than 4x" in admit(f, 201 * GiB, 4.0).reason


def test_empty_vg_and_bad_input() -> None:
    assert not admit(VgCommitted("vg", 0, 0, 0, 0), 1, 4.0).admit
    with pytest.raises(ValueError):
        admit(VgCommitted("vg", 1, 0, 0, 0), 0, 4.0)
    with pytest.raises(ValueError):
        admit(VgCommitted("vg", 1, 0, 0, 0), 1, 0.0)


@given(st.lists(vgs(), min_size=1, max_size=5))
def test_the_pool_is_the_sum_of_its_vgs(figs: list[VgCommitted]) -> None:
    total = pool_total(figs)
    assert total.vg == "*"
    assert total.size == sum(f.size for f in figs)
    assert total.committed == sum(f.committed for f in figs)
    assert total.unknown == sum(f.unknown for f in figs) <= total.volumes


@given(st.lists(st.one_of(st.none(), st.integers(1, 1 << 50)), max_size=20))
def test_sum_counts_unknown_apart(values: list[int | None]) -> None:
    vols = [VolumeVsize(f"lv{i}", v, "tag" if v else "unknown") for i, v in enumerate(values)]
    f = sum_committed("vg", 10, vols)
    assert f.committed == sum(v for v in values if v is not None)
    assert f.unknown == values.count(None) and f.volumes == len(values)


@given(st.integers(1, (1 << 63) - 1))
def test_vsize_tag_round_trip(n: int) -> None:
    assert vsize_from_tags(["other", vsize_tag(n), "x=1"]) == n
    assert vsize_from_tags([vsize_tag(n), vsize_tag(n)]) == n


@pytest.mark.parametrize("tags", [
    ["autoextend.vsize="], ["autoextend.vsize=12x"], ["autoextend.vsize=-1"],
    ["autoextend.vsize=0"], ["autoextend.vsize=007"], ["autoextend.vsize=9223372036854775808"],
    ["autoextend.vsize=1", "autoextend.vsize=2"],
])
def test_bad_vsize_tags_are_unknown_never_guessed(tags: list[str]) -> None:
    with pytest.raises(BadVsizeTag):
        vsize_from_tags(tags)


def test_no_tag_and_tag_range() -> None:
    assert vsize_from_tags(["autoextend.vsizex=1", "vsize=2"]) is None
    with pytest.raises(ValueError):
        vsize_tag(0)
