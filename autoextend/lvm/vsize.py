"""The virtual size tag: ``autoextend.vsize=<bytes>`` on an LV (pure, no I/O).

Whoever creates a volume sets it (``LvmWriter.create_lv(..., virtual_size=N)``; by hand:
``lvcreate ... --addtag autoextend.vsize=N`` or ``lvchange --addtag`` later): the virtual
size of the disk image the LV holds, in bytes. The SPM sums these tags over every LV of the
pool's VGs for the committed space it publishes (``capacity/committed.py``): one ``lvs``
report per VG, no device to open (an SPM with activation off, as the lab's lvm2 on loop PVs,
cannot open an LV at all). lvm2 accepts ``=`` in tags since 2.02.78.

A tag that is not a decimal number in ``1..2**63-1``, or two tags that disagree, make the
LV's virtual size unknown (:class:`BadVsizeTag`): never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable

VSIZE_TAG_PREFIX = "autoextend.vsize="
MAX_VSIZE = (1 << 63) - 1


class BadVsizeTag(ValueError):
    """The LV's virtual size tags cannot be read (malformed, or two that disagree)."""


def vsize_tag(vsize: int) -> str:
    """The tag for a volume of ``vsize`` bytes (ValueError out of ``1..2**63-1``)."""
    if not 0 < vsize <= MAX_VSIZE:
        raise ValueError(f"virtual size {vsize} out of range")
    return f"{VSIZE_TAG_PREFIX}{vsize}"


def vsize_from_tags(tags: Iterable[str]) -> int | None:
    """The virtual size the tags give, None when there is no such tag; BadVsizeTag when
    one is malformed or two disagree."""
    found: set[int] = set()
    for tag in tags:
        if not tag.startswith(VSIZE_TAG_PREFIX):
            continue
        text = tag[len(VSIZE_TAG_PREFIX):]
        if not (text.isascii() and text.isdigit()) or len(text) > 19 or text.startswith("0"):
            raise BadVsizeTag(f"tag {tag[:60]!r} is not a size in bytes")
        value = int(text)
        if value > MAX_VSIZE:
            raise BadVsizeTag(f"tag {tag[:60]!r} is out of range")
        found.add(value)
    if len(found) > 1:
        raise BadVsizeTag(f"tags disagree: {sorted(found)}")
    return found.pop() if found else None
