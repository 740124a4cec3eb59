"""Adds the simulation's figures (simulated seconds, requests, faults, invariant checks) to
pytest's terminal summary, whatever the capture mode."""

from __future__ import annotations

from typing import Any

from .figures import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("deterministic simulation")
    for line in FIGURES:
        terminalreporter.write_line(line)
