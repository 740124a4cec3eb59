"""Thin volumes for the lab: a sparse file on a loop device holding a qcow2 image.

The loop device stands in for an LV on shared storage: it has a fixed size (the "LV size"),
qcow2 allocation grows inside it, and writes past its end fail with ENOSPC. Growing it is
``truncate`` + ``losetup -c``, which a running QEMU sees without ``block_resize``.

:func:`thin_volume` is the async context manager tests use; it always detaches the device and
deletes the file, also on failure and cancellation.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lab import proc
from autoextend.lab.errors import CommandError
from autoextend.lvm import loopdev

log = logs.get_logger("lab.thinvol")

MiB = 1 << 20


@dataclass(frozen=True)
class QcowCheck:
    """The summary of ``qemu-img check --output=json``."""

    clean: bool
    check_errors: int
    corruptions: int
    leaks: int
    allocated_clusters: int
    image_end_offset: int
    raw: dict[str, Any]


def parse_check(text: str) -> QcowCheck:
    """Parse ``qemu-img check --output=json`` output.

    Raises:
        ValueError: not the JSON qemu-img prints.
    """
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        errors = int(doc.get("check-errors", 0))
        corruptions = int(doc.get("corruptions", 0))
        leaks = int(doc.get("leaks", 0))
        return QcowCheck(
            clean=errors == 0 and corruptions == 0 and leaks == 0,
            check_errors=errors,
            corruptions=corruptions,
            leaks=leaks,
            allocated_clusters=int(doc.get("allocated-clusters", 0)),
            image_end_offset=int(doc.get("image-end-offset", 0)),
            raw=doc,
        )
    except (ValueError, TypeError) as err:
        raise ValueError(f"unexpected qemu-img check output: {err}") from err


async def qemu_img_check(path: str, *, force_share: bool = False) -> QcowCheck:
    """Run ``qemu-img check`` on a qcow2 image (file or device).

    qemu-img exits 2 for corruptions and 3 for leaks; both still print the JSON report, so
    those are returned as a not-clean :class:`QcowCheck` rather than raised.

    Raises:
        CommandError: qemu-img could not check the image at all (missing, locked, not qcow2).
    """
    command = ["qemu-img", "check", "--output=json", "-f", "qcow2"]
    if force_share:
        command.append("-U")
    command.append(path)
    result = await anyio.run_process(command, check=False)
    stdout = result.stdout.decode(errors="replace")
    if result.returncode in (0, 2, 3) and stdout.strip():
        try:
            return parse_check(stdout)
        except ValueError:
            pass
    raise CommandError(command, result.returncode, result.stderr.decode(errors="replace"))


@dataclass
class ThinVolume:
    """A sparse file attached to a loop device, with a qcow2 image on the device."""

    path: Path
    device: str
    virtual_size: int
    sector_size: int = 512
    removed: bool = False

    @property
    def size(self) -> int:
        """The backing file size: the volume ("LV") size."""
        return self.path.stat().st_size

    def device_size(self) -> int:
        """The size the kernel currently reports for the loop device."""
        return loopdev.size_of(self.device)

    async def grow(self, *, to: int | None = None, by: int | None = None) -> int:
        """Grow the volume to ``to`` bytes or by ``by`` bytes; returns the new size.

        The loop device re-reads its size, so a QEMU holding it open sees the new size at
        once. Never shrinks: a ``to`` at or below the current size is a no-op.
        """
        if (to is None) == (by is None):
            raise ValueError("give exactly one of to= or by=")
        current = self.size
        target = current + by if by is not None else to
        assert target is not None
        if target % self.sector_size:
            raise ValueError(f"size {target} is not a multiple of {self.sector_size}")
        if target > current:
            await anyio.to_thread.run_sync(os.truncate, self.path, target)
            await loopdev.set_capacity(self.device)
            log.info("volume grown", volume=str(self.path), device=self.device, size=target)
        return max(target, current)

    async def check(self, *, force_share: bool = False) -> QcowCheck:
        """``qemu-img check`` of the qcow2 image on the device."""
        return await qemu_img_check(self.device, force_share=force_share)


async def create(
    path: str | os.PathLike[str],
    size: int,
    virtual_size: int,
    *,
    sector_size: int = 512,
    format_qcow2: bool = True,
    cluster_size: int | None = None,
) -> ThinVolume:
    """Create the sparse file, attach it, and create the qcow2 on the device.

    On any failure the device is detached and the file removed before the error propagates.

    Raises:
        ValueError: a size that is not a positive multiple of ``sector_size``.
        LoopError, CommandError: losetup or qemu-img failed.
        FileExistsError: ``path`` already exists (never reuses someone else's file).
    """
    if size <= 0 or size % sector_size:
        raise ValueError(f"size must be a positive multiple of {sector_size}, got {size}")
    if virtual_size <= 0 or virtual_size % 512:
        raise ValueError(f"virtual_size must be a positive multiple of 512, got {virtual_size}")
    file = Path(path)

    def make_file() -> None:
        with open(file, "xb") as f:
            f.truncate(size)

    await anyio.to_thread.run_sync(make_file)
    device = None
    try:
        device = await loopdev.attach(file, sector_size=sector_size)
        if format_qcow2:
            command = ["qemu-img", "create", "-q", "-f", "qcow2"]
            if cluster_size:
                command += ["-o", f"cluster_size={cluster_size}"]
            await proc.run([*command, device, str(virtual_size)])
    except BaseException:
        with anyio.CancelScope(shield=True):
            if device is not None:
                await _detach_quietly(device)
            await anyio.to_thread.run_sync(lambda: file.unlink(missing_ok=True))
        raise
    log.info("volume created", volume=str(file), device=device, size=size)
    return ThinVolume(file, device, virtual_size, sector_size)


async def remove(volume: ThinVolume) -> None:
    """Detach the device and delete the file. Safe to call twice (the second call does
    nothing, so a device number reused by someone else is never detached)."""
    if volume.removed:
        return
    volume.removed = True
    with anyio.CancelScope(shield=True):
        await _detach_quietly(volume.device)
        await anyio.to_thread.run_sync(lambda: volume.path.unlink(missing_ok=True))
    log.info("volume removed", volume=str(volume.path), device=volume.device)


async def _detach_quietly(device: str) -> None:
    try:
        await loopdev.detach(device)
    except loopdev.LoopError as err:
        log.warning("detach failed", device=device, error=str(err))


@asynccontextmanager
async def thin_volume(
    path: str | os.PathLike[str],
    size: int,
    virtual_size: int,
    *,
    sector_size: int = 512,
    format_qcow2: bool = True,
) -> AsyncIterator[ThinVolume]:
    """A thin volume for the duration of the block; always detached and deleted after."""
    volume = await create(
        path, size, virtual_size, sector_size=sector_size, format_qcow2=format_qcow2
    )
    try:
        yield volume
    finally:
        await remove(volume)


__all__ = ["MiB", "QcowCheck", "ThinVolume", "create", "parse_check", "qemu_img_check",
           "remove", "thin_volume"]
