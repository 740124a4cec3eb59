"""Issue 34: what the host prints after the SPM refused or did not answer is true of the
volume's size read again (``capacity/reduce.py: settle``, pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.capacity.reduce import ReducePlan, ReduceRefused, ReduceUnanswered, settle
from autoextend.cli.volume import _render
from autoextend.volumes import VolumeRef

MiB = 1 << 20
VOL = VolumeRef("vg0", "lv1")


@given(st.integers(2, 1 << 20), st.integers(1, 1 << 20), st.integers(1, 1 << 21),
       st.booleans())
def test_the_answer_names_the_size_now(before: int, target: int, now: int,
                                       answered: bool) -> None:
    before, target, now = before * MiB, min(target, before - 1) * MiB, now * MiB
    cause = (ReduceRefused if answered else ReduceUnanswered)(VOL, "the SPM refused: x")
    try:
        new_size, note = settle(VOL, before, target, cause, now)
    except ReduceRefused as refusal:
        assert type(refusal) is type(cause) and now > target
        assert f"{now / MiB:.1f} MiB" in refusal.reason
        assert ("unchanged" in refusal.reason) == (now == before)
        assert ("changed anyway" in refusal.reason) == (now != before)
    else:
        assert now <= target and new_size == now and "the reduce was applied" in note


def test_reduced_anyway_is_a_success_that_says_how_it_is_known() -> None:
    new_size, note = settle(VOL, 256 * MiB, 108 * MiB,
                            ReduceRefused(VOL, "the SPM refused: this SPM took over 0 s ago"),
                            108 * MiB)
    plan = ReducePlan(str(VOL), 256 * MiB, 40 * MiB, 108 * MiB, new_size, 148 * MiB, False,
                      note)
    line = _render(plan.as_dict())
    assert "reduced to 108.0 MiB, gave back 148.0 MiB" in line
    assert "took over 0 s ago; but the volume is at 108.0 MiB now" in line


def test_unchanged_refusal_line() -> None:
    with pytest.raises(ReduceRefused) as info:
        settle(VOL, 256 * MiB, 108 * MiB, ReduceRefused(VOL, "the SPM refused: busy"),
               256 * MiB)
    assert str(info.value) == ("cannot reduce vg0/lv1: the SPM refused: busy; the volume is"
                               " unchanged at 256.0 MiB")


def test_unanswered_unchanged_line_says_the_spm_may_still_act() -> None:
    with pytest.raises(ReduceUnanswered) as info:
        settle(VOL, 256 * MiB, 108 * MiB, ReduceUnanswered(VOL, "no answer from the SPM"),
               256 * MiB)
    assert str(info.value).endswith("unchanged at 256.0 MiB; the SPM may still apply it: run"
                                    " the same reduce again for its outcome")
