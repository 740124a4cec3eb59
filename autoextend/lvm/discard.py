"""Give freed extents back to a thin array: discard exactly what a reduce or remove freed.

vdsm discards before it removes ("discard after delete"): on a thin-provisioned LUN, extents
that lvm2 marks free stay allocated in the array until the host discards them. The SPM does
it right after its ``lvreduce``/``lvremove``, in the same per-VG critical section of
:class:`~autoextend.lvm.writer.LvmWriter`.

**What is discarded, and why it is never live data.** The ranges are computed from two
``pvs --segments`` reports taken under that lock: the extents the LV held *before* the
command, intersected with the extents that are *free after* it (:func:`freed_ranges`). An
extent is discarded only if both reports agree: it was this LV's, and now it is nobody's.
Nothing can hand it to another LV in between: the SPM is the one metadata writer, and its
next lvm2 command on the VG waits for the same lock. A parse or logic error cannot widen the
set: an extent another LV holds is never in the second report's free runs.

**Fencing.** A discard is a write to shared storage. The writer checks its SPM term before
every discard call (as before every lvm2 command), and issues at most
:data:`MAX_DISCARD_BYTES` per call, so an SPM that lost its term stops within one bounded
call: a new SPM cannot have reused the extents before our term could have lapsed (the
lease's ``8 T + W`` takeover bound, see ``lease/term.py``).

The discard is ``BLKDISCARD`` on the PV device, in a worker thread (it may take seconds on a
big range). A device without discard support (``EOPNOTSUPP``) is logged once per device and
counted as 0 bytes: the reduce itself has succeeded.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from autoextend.lvm.report import PvSegment

BLKDISCARD = 0x1277                # _IO(0x12, 119), linux/fs.h
MAX_DISCARD_BYTES = 256 << 20       # per call: the term is checked between calls


@dataclass
class Discarded:
    """Bytes given back to the array by this process's writers (one per SPM term; the
    service keeps one tally for all of them: ``autoextend_discarded_bytes_total``)."""

    bytes: int = 0


@dataclass(frozen=True)
class ByteRange:
    device: str
    offset: int
    length: int


def _extents(segs: tuple[PvSegment, ...], pick: str) -> dict[str, set[int]]:
    """{pv: the extent numbers in runs whose LV is ``pick`` ("" for free)}."""
    out: dict[str, set[int]] = {}
    for seg in segs:
        if seg.lv == pick:
            out.setdefault(seg.pv, set()).update(range(seg.start, seg.start + seg.count))
    return out


def _runs(numbers: set[int]) -> list[tuple[int, int]]:
    """Sorted (first, count) runs of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][0] + runs[-1][1] == n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    return runs


def freed_ranges(before: tuple[PvSegment, ...], after: tuple[PvSegment, ...],
                 lv: str) -> list[ByteRange]:
    """Byte ranges on the PV devices that ``lv`` held before and that are free after."""
    held = _extents(before, lv)
    free = _extents(after, "")
    layout = {seg.pv: (seg.pe_start, seg.extent_size) for seg in after}
    ranges: list[ByteRange] = []
    for pv in sorted(held):
        if pv not in layout:
            continue
        pe_start, extent = layout[pv]
        for first, count in _runs(held[pv] & free.get(pv, set())):
            ranges.append(ByteRange(pv, pe_start + first * extent, count * extent))
    return ranges


def split(r: ByteRange, limit: int = MAX_DISCARD_BYTES) -> list[ByteRange]:
    """``r`` as consecutive pieces of at most ``limit`` bytes."""
    return [ByteRange(r.device, r.offset + at, min(limit, r.length - at))
            for at in range(0, r.length, limit)]


def discard(r: ByteRange) -> bool:
    """BLKDISCARD one range (blocking: call it in a worker thread). False: the device does
    not support discard."""
    fd = os.open(r.device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", r.offset, r.length))
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
            return False
        raise
    finally:
        os.close(fd)
    return True
