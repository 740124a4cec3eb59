"""The example counts by stage (tests/hypo.py): make test tries every count in full, make unit
a fifth of it, never fewer than 10 (or the full count, if that is smaller)."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.hypo import FULL_EXAMPLES, UNIT_EXAMPLES, examples


def test_the_full_profile_keeps_every_count() -> None:
    full = settings.get_profile("autoextend")
    assert full.max_examples == FULL_EXAMPLES
    assert [examples(n, full) for n in (1, 25, 300, 400)] == [1, 25, 300, 400]


def test_the_unit_profile_tries_a_fifth_but_at_least_ten() -> None:
    unit = settings.get_profile("unit")
    assert unit.max_examples == UNIT_EXAMPLES < FULL_EXAMPLES
    assert unit.deadline is None  # the rest is the full profile's
    assert [examples(n, unit) for n in (1, 10, 25, 40, 300, 400)] == [1, 10, 10, 10, 60, 80]


def test_the_loaded_profile_decides() -> None:
    assert examples(300) == examples(
        300, settings.get_profile(settings.get_current_profile_name()))


def test_no_count_is_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1 input"):
        examples(0)
