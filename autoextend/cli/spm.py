"""``autoextend spm``: commands (filled in by the spm component)."""

from __future__ import annotations

import click


@click.group("spm")
def spm() -> None:
    """Storage Pool Manager role: inspect and move it."""
