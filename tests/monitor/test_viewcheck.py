"""The view check's rule (monitor/viewcheck.py), over every input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor.viewcheck import FILL_SLACK, ViewAction, filled_view, judge_view

sizes = st.integers(min_value=0, max_value=1 << 44)


@given(view=sizes, metadata=sizes, extending_to=st.none() | sizes, migrating=st.booleans(),
       ran=st.booleans(), filled=st.booleans())
def test_rule(view: int, metadata: int, extending_to: int | None, migrating: bool,
              ran: bool, filled: bool) -> None:
    action = judge_view(view, metadata, extending_to=extending_to, migrating=migrating,
                        guest_has_run=ran, filled=filled)
    covered = view == metadata or migrating or (
        extending_to is not None and extending_to >= metadata)
    if view > metadata:  # the volume shrank under the view: always a pause (issue 27)
        assert action is ViewAction.SHRUNK
    elif covered:
        assert action is ViewAction.OK
    elif not ran:
        assert action is ViewAction.REFRESH
    else:  # a guest that filled this view and paused for ENOSPC here: its own growth
        assert action is (ViewAction.GROWN if filled else ViewAction.PAUSE)


@given(view=sizes, allocation=sizes, enospc=st.booleans())
def test_filled_only_an_enospc_pause_at_the_views_end(view: int, allocation: int,
                                                      enospc: bool) -> None:
    assert filled_view(view, allocation, paused_enospc_here=enospc) is (
        enospc and view < allocation <= view + FILL_SLACK)


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
    # Paused for ENOSPC at the end of its view, which the volume outgrew: this host's own
    # extension landed after the service died (refresh and resume); short of the end: held.
    filled = filled_view(64 * mib, 64 * mib + 320 * 1024, paused_enospc_here=True)
    assert judge_view(64 * mib, 128 * mib, guest_has_run=True, filled=filled) \
        is ViewAction.GROWN
    # Its writes stopped inside the view, or failed far past it (another host's data lies
    # between: its qcow2 allocates past that), or it paused for something else: held.
    assert not filled_view(64 * mib, 64 * mib, paused_enospc_here=True)
    assert not filled_view(64 * mib, 80 * mib, paused_enospc_here=True)
    assert not filled_view(64 * mib, 64 * mib + 320 * 1024, paused_enospc_here=False)
    assert judge_view(128 * mib, 64 * mib, guest_has_run=True, filled=True) \
        is ViewAction.SHRUNK
    assert judge_view(64 * mib, 128 * mib, guest_has_run=False, filled=True) \
        is ViewAction.REFRESH
