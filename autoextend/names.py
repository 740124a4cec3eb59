"""What a VG or LV name may be: lvm2's naming rules, shared vocabulary (no I/O).

The config rules, the SPM's request check, the capacity records and the volume backends all
decide whether a name is one lvm2 would accept, or one of lvm2's own internal volumes, the
same way: here. Device paths and extent arithmetic belong to the LVM backend
(:mod:`autoextend.lvm.names`).
"""

from __future__ import annotations

import re

MAX_NAME_LEN = 127
_NAME_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")


def is_valid_name(name: str) -> bool:
    """True for a name lvm2 accepts for a VG or LV (characters, length, no leading ``-``)."""
    return (
        0 < len(name) <= MAX_NAME_LEN
        and name not in (".", "..")
        and _NAME_RE.fullmatch(name) is not None
    )


# LV names lvm2 reserves for its own internal (component) volumes, as lvm2's
# apply_lvname_restrictions() does (lib/misc/lvm-string.c, lvm2 2.03): a name starting with a
# reserved prefix, or containing a reserved part anywhere. "_mimagetmp" and "_rimage_N" are
# covered by "_mimage" and "_rimage". lvm2 refuses to create such names, so an LV called so is
# one of its internal volumes: never a VM disk to extend.
RESERVED_LV_PREFIXES = ("pvmove", "snapshot")
RESERVED_LV_PARTS = (
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_mimage", "_mlog", "_rimage",
    "_rmeta", "_tdata", "_tmeta", "_vdata", "_imeta", "_iorig", "_pmspare", "_vorigin",
)


def reserved_lv_word(name: str) -> str | None:
    """The reserved prefix or part of lvm2 that ``name`` uses, or None."""
    for prefix in RESERVED_LV_PREFIXES:
        if name.startswith(prefix):
            return prefix
    for part in RESERVED_LV_PARTS:
        if part in name:
            return part
    return None


def lv_name_problem(name: str) -> str | None:
    """Why ``name`` is not an LV name autoextend acts on (invalid, or reserved), or None."""
    if not is_valid_name(name):
        return "not a valid LVM name"
    word = reserved_lv_word(name)
    if word is not None:
        return f"reserved for lvm2 internal volumes ({word!r})"
    return None


def check_name(kind: str, name: str) -> str:
    """Return ``name`` or raise ValueError naming what is wrong with it."""
    if not is_valid_name(name):
        raise ValueError(f"invalid {kind} name {name!r}")
    return name
