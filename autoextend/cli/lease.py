"""``autoextend lease``: commands (filled in by the lease component)."""

from __future__ import annotations

import click


@click.group("lease")
def lease() -> None:
    """Format and inspect the lease area on shared storage."""
