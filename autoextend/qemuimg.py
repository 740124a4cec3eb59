"""``qemu-img measure``: what a qcow2 holding an image chain's data needs (used by both
hypervisor backends to size a commit's base before the commit writes, and by the libvirt
backend to size a push-mode backup's target before the backup writes)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import anyio

from autoextend.logs import get_logger

log = get_logger("qemuimg")

#: Sizes above this are no real sizes (int64, as QEMU reports them).
MAX_SIZE = (1 << 63) - 1

#: path of a qcow2 image (its backing chain below it is followed) -> bytes a qcow2 holding
#: all of its data needs, or None when it cannot be measured.
Measure = Callable[[str], Awaitable[int | None]]


#: ``Measure`` with the image's format given (``raw``, ``qcow2``): no format probe.
FormatMeasure = Callable[[str, str], Awaitable[int | None]]

#: Formats :func:`qemu_img_measure` accepts for ``fmt``.
FORMATS = frozenset({"raw", "qcow2"})


async def qemu_img_measure(path: str, fmt: str = "") -> int | None:
    """``qemu-img measure -U -O qcow2``: what a qcow2 with the chain's data needs. ``fmt``
    (``raw``, ``qcow2``) names the source's format, so qemu-img does not probe it (a raw
    disk's content is the guest's: it must never be taken for a qcow2 header)."""
    if fmt and fmt not in FORMATS:
        return None
    command = ["qemu-img", "measure", "-U", "--output=json", "-O", "qcow2"]
    command += ["-f", fmt] if fmt else []
    try:
        with anyio.fail_after(30):
            done = await anyio.run_process([*command, path], check=False)
    except (OSError, TimeoutError) as err:
        log.warning("qemu-img measure failed", path=path, error=str(err))
        return None
    if done.returncode != 0:
        log.warning("qemu-img measure failed", path=path,
                    error=done.stderr.decode(errors="replace").strip()[:300])
        return None
    try:
        required = json.loads(done.stdout).get("required")
    except (ValueError, AttributeError):
        return None
    if isinstance(required, int) and not isinstance(required, bool) and 0 < required <= MAX_SIZE:
        return required
    return None


async def qemu_img_fully_allocated(capacity: int, cluster_size: int) -> int | None:
    """``qemu-img measure -O qcow2 -o cluster_size=C --size CAPACITY``'s ``fully-allocated``:
    the most a qcow2 of that capacity occupies without bitmaps (the honest cap's base,
    ``monitor/policy.py``); None when qemu-img gives no figure."""
    command = ["qemu-img", "measure", "--output=json", "-O", "qcow2",
               "-o", f"cluster_size={cluster_size}", "--size", str(capacity)]
    try:
        with anyio.fail_after(30):
            done = await anyio.run_process(command, check=False)
    except (OSError, TimeoutError) as err:
        log.warning("qemu-img measure failed", capacity=capacity, error=str(err))
        return None
    if done.returncode != 0:
        log.warning("qemu-img measure failed", capacity=capacity,
                    error=done.stderr.decode(errors="replace").strip()[:300])
        return None
    try:
        full = json.loads(done.stdout).get("fully-allocated")
    except (ValueError, AttributeError):
        return None
    if isinstance(full, int) and not isinstance(full, bool) and 0 < full <= MAX_SIZE:
        return full
    return None
