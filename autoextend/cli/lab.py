"""``autoextend lab``: commands (filled in by the lab component)."""

from __future__ import annotations

import click


@click.group("lab")
def lab() -> None:
    """One-machine lab: guests, thin volumes, QEMU and libvirtd by hand."""
