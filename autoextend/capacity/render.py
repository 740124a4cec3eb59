"""The capacity lines of ``autoextend status`` (pure)."""

from __future__ import annotations

from typing import Any


def _mib(n: int | float) -> str:
    value = int(n) / (1 << 20)
    return f"{value / 1024:.1f}GiB" if value >= 1024 else f"{value:.1f}MiB"


def render_capacity(capacity: dict[str, Any] | None) -> list[str]:
    """One line per VG; a VG not at level ok is flagged in capitals, first in its line."""
    lines: list[str] = []
    if not capacity:
        return lines
    for vg in capacity.get("vgs", []):
        size, free = int(vg["size"]), int(vg["free"])
        pct = 100.0 * free / size if size else 0.0
        head = vg.get("headroom_s")
        flag = "" if vg["level"] == "ok" else f"{vg['level'].upper()}: "
        lines.append(
            f"{flag}VG {vg['vg']}  size {_mib(size)}  free {_mib(free)} ({pct:.1f}%)"
            f"  committed {_mib(vg['committed'])} ({vg['overcommit_ratio']:.2f}x)"
            f"  headroom {'-' if head is None else f'{head:.0f} s'}")
    if capacity.get("reduces"):
        lines.append(f"{capacity['reduces']} volumes reduced, "
                     f"{_mib(capacity['reduced_bytes'])} given back")
    return lines
