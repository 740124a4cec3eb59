"""Fixtures of the LVM tests (defined in support.py)."""

from __future__ import annotations

from .support import pool

__all__ = ["pool"]
