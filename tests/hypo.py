"""How many inputs a property test tries, by stage.

``make test`` (and CI) runs the "autoextend" profile (tests/conftest.py): hypothesis's
default of 100 examples, and ``examples(N)`` is N. ``make unit`` passes
``--hypothesis-profile=unit``: 20 examples, and ``examples(N)`` is a fifth of N (at least
``MIN_EXAMPLES``). The quick stage still runs every property, explicit ``@example`` cases
included, on fewer generated inputs; the full counts run in stage 1 of ``make test``.

Use it as ``@settings(max_examples=examples(300))``; the count is read when the test module
is imported, after pytest has loaded the profile."""

from __future__ import annotations

from hypothesis import settings

FULL_EXAMPLES = 100  # the "autoextend" profile's max_examples (hypothesis's default)
UNIT_EXAMPLES = 20   # the "unit" profile's, for make unit
MIN_EXAMPLES = 10


def examples(full: int, profile: settings | None = None) -> int:
    """``full`` under the full profile; the same share of it as the profile's
    ``max_examples`` is of ``FULL_EXAMPLES`` under a smaller one, but at least
    ``MIN_EXAMPLES`` (or ``full``, if that is less). ``profile``: the loaded one by
    default."""
    if full < 1:
        raise ValueError(f"examples({full}): a property test tries at least 1 input")
    if profile is None:
        profile = settings.get_profile(settings.get_current_profile_name())
    share = profile.max_examples / FULL_EXAMPLES
    if share >= 1:
        return full
    return max(min(full, MIN_EXAMPLES), round(full * share))
