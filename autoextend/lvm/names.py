"""Pure helpers for LVM device paths and extent arithmetic (no I/O). What a name may be is
shared vocabulary: :mod:`autoextend.names`.

Device-mapper names join VG and LV with a single ``-`` after doubling every ``-`` inside
either name (``my-vg``/``lv-1`` -> ``my--vg-lv--1``). LVM names never start with ``-``, which
makes the split unambiguous.
"""

from __future__ import annotations

from autoextend.names import is_valid_name, lv_name_problem
from autoextend.volumes import VolumeRef


def extents_for(size: int, extent_size: int) -> int:
    """The number of extents needed to hold ``size`` bytes (rounded up)."""
    if extent_size <= 0:
        raise ValueError(f"extent size must be positive, got {extent_size}")
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    return -(-size // extent_size)


def round_up_to_extent(size: int, extent_size: int) -> int:
    """``size`` rounded up to a whole number of extents."""
    return extents_for(size, extent_size) * extent_size


def mapper_name(volume: VolumeRef) -> str:
    """The device-mapper name of ``vg/lv``."""
    return f"{volume.vg.replace('-', '--')}-{volume.lv.replace('-', '--')}"


def parse_mapper_name(name: str) -> VolumeRef | None:
    """The inverse of :func:`mapper_name`; None when ``name`` is not one."""
    vg_chars: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if char == "-":
            if name.startswith("--", i):
                vg_chars.append("-")
                i += 2
                continue
            vg = "".join(vg_chars)
            rest = name[i + 1 :]
            lv = _undouble(rest)
            if lv is None or not is_valid_name(vg) or lv_name_problem(lv) is not None:
                return None
            return VolumeRef(vg, lv)
        vg_chars.append(char)
        i += 1
    return None


def _undouble(text: str) -> str | None:
    """Undo the ``-`` doubling of one name; None if a single ``-`` remains."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "-":
            if not text.startswith("--", i):
                return None
            out.append("-")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def lvm_device_path(volume: VolumeRef) -> str:
    """``/dev/<vg>/<lv>``: the path lvm2 creates for an active LV."""
    return f"/dev/{volume.vg}/{volume.lv}"


def parse_lvm_device_path(path: str) -> VolumeRef | None:
    """Map ``/dev/<vg>/<lv>`` or ``/dev/mapper/<vg>-<lv>`` to ``vg/lv``; None otherwise
    (also for lvm2's internal volumes, ``vg-pool_tdata`` and the like: never ours)."""
    if path.startswith("/dev/mapper/"):
        return parse_mapper_name(path[len("/dev/mapper/") :])
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "dev":
        vg, lv = parts[2], parts[3]
        if is_valid_name(vg) and lv_name_problem(lv) is None and vg not in ("mapper", "disk"):
            return VolumeRef(vg, lv)
    return None
