"""The view check's rule (monitor/viewcheck.py), over every input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor.viewcheck import ViewAction, judge_view

sizes = st.integers(min_value=0, max_value=1 << 44)


@given(view=sizes, metadata=sizes, extending_to=st.none() | sizes, migrating=st.booleans(),
       ran=st.booleans())
def test_rule(view: int, metadata: int, extending_to: int | None, migrating: bool,
              ran: bool) -> None:
    action = judge_view(view, metadata, extending_to=extending_to, migrating=migrating,
                        guest_has_run=ran)
    covered = view == metadata or migrating or (
        extending_to is not None and extending_to >= metadata)
    if view > metadata:  # the volume shrank under the view: always a pause (issue 27)
        assert action is ViewAction.SHRUNK
    elif covered:
        assert action is ViewAction.OK
    else:
        assert action is (ViewAction.PAUSE if ran else ViewAction.REFRESH)


def test_examples() -> None:
    mib = 1 << 20
    assert judge_view(100 * mib, 100 * mib, guest_has_run=True) is ViewAction.OK
    assert judge_view(64 * mib, 128 * mib, guest_has_run=False) is ViewAction.REFRESH
    assert judge_view(64 * mib, 128 * mib, guest_has_run=True) is ViewAction.PAUSE
    assert judge_view(64 * mib, 128 * mib, extending_to=128 * mib,
                      guest_has_run=True) is ViewAction.OK
    assert judge_view(64 * mib, 128 * mib, extending_to=96 * mib,
                      guest_has_run=True) is ViewAction.PAUSE
    assert judge_view(64 * mib, 128 * mib, migrating=True, guest_has_run=True) is ViewAction.OK
    # Shrunk under the view: a pause whatever else holds (issue 27).
    for ran in (False, True):
        assert judge_view(128 * mib, 64 * mib, guest_has_run=ran) is ViewAction.SHRUNK
    assert judge_view(128 * mib, 64 * mib, migrating=True, extending_to=256 * mib,
                      guest_has_run=True) is ViewAction.SHRUNK
