"""The one retry backoff (autoextend/backoff.py): 0 before any failure, then doubling from
``initial`` up to ``maximum``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.backoff import backoff


def test_the_sequence() -> None:
    assert [backoff(n, 0.05, 0.4) for n in range(7)] == [0.0, 0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert backoff(-1, 1.0, 2.0) == 0.0


@given(failures=st.integers(1, 10_000), initial=st.floats(0.01, 10),
       maximum=st.floats(0.01, 100))
def test_bounded_and_monotonic(failures: int, initial: float, maximum: float) -> None:
    a = backoff(failures, initial, maximum)
    b = backoff(failures + 1, initial, maximum)
    assert 0 < a <= maximum
    assert a <= b
    assert backoff(1, initial, maximum) == min(initial, maximum)
