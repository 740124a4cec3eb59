"""Lines the simulation tests report in pytest's terminal summary (see conftest.py)."""

from __future__ import annotations

FIGURES: list[str] = []
