"""``monitor/extension.py: sole``: an extension's failure wrapped by a task group (its
throttle watch) is judged as the failure it wraps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.errors import AutoextendError
from autoextend.monitor.extension import sole
from autoextend.qmp.errors import VmNotFound


@given(st.integers(0, 4))
def test_a_failure_wrapped_once_or_more_is_unwrapped(depth: int) -> None:
    inner = VmNotFound("chaos2", "query-migrate")
    exc: Exception = inner
    for _ in range(depth):
        exc = ExceptionGroup("unhandled errors in a TaskGroup", [exc])
    assert sole(exc) is inner
    assert isinstance(sole(exc), AutoextendError)  # a warning, retried: not "unexpected"


def test_a_group_of_several_failures_stays_a_group() -> None:
    group = ExceptionGroup("two", [VmNotFound("a", "x"), RuntimeError("b")])
    assert sole(group) is group
