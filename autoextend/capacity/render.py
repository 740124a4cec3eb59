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
        mda_size, mda_free = vg.get("mda_size"), vg.get("mda_free")
        if mda_size and mda_free is not None:
            mflag = "" if vg.get("mda_level", "ok") == "ok" else \
                f"{str(vg['mda_level']).upper()}: "
            lines.append(
                f"  {mflag}metadata area {_mib(mda_free)} free of {_mib(mda_size)}"
                f" ({100.0 * int(mda_free) / int(mda_size):.1f}%), about"
                f" {vg.get('mda_extends_left')} extends left"
                f" ({vg.get('mda_bytes_per_extend')} B each),"
                f" at most {vg.get('max_segments')} segments per LV")
    if capacity.get("reduces"):
        lines.append(f"{capacity['reduces']} volumes reduced, "
                     f"{_mib(capacity['reduced_bytes'])} given back")
    return lines
