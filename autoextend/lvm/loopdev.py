"""Loop devices: attach a file, detach, re-read the size, and find the devices of a file.

Thin async wrappers over ``losetup`` (util-linux). The loop volume backend and the lab's thin
volumes build on them. Every failure raises :class:`LoopError` with the command and its stderr.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from autoextend import boundedjson
from autoextend.errors import VolumeError

LOSETUP = "losetup"
SECTOR_SIZES = (512, 1024, 2048, 4096)


class LoopError(VolumeError):
    """A ``losetup`` command failed (or printed something we cannot use)."""

    def __init__(self, command: list[str], returncode: int, stderr: str, reason: str = "") -> None:
        self.command = command
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.reason = reason
        detail = reason or self.stderr or f"exit code {returncode}"
        super().__init__(f"{' '.join(command)}: {detail}")


@dataclass(frozen=True)
class LoopDevice:
    """One attached loop device as ``losetup --list`` reports it."""

    name: str            # /dev/loopN
    backing_file: str    # as the kernel reports it; may end in " (deleted)"
    sector_size: int
    direct_io: bool
    read_only: bool


async def _losetup(args: list[str]) -> str:
    command = [LOSETUP, *args]
    try:
        result = await anyio.run_process(command, check=False)
    except OSError as err:
        raise LoopError(command, -1, "", f"cannot run {LOSETUP}: {err.strerror}") from err
    stderr = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise LoopError(command, result.returncode, stderr)
    return result.stdout.decode(errors="replace")


async def attach(
    path: str | os.PathLike[str],
    *,
    sector_size: int = 512,
    direct_io: bool = False,
    read_only: bool = False,
) -> str:
    """Attach ``path`` to a free loop device and return the device path (``/dev/loopN``).

    Raises:
        ValueError: ``sector_size`` is not a valid logical sector size.
        LoopError: losetup failed (file missing, no free device, bad sector size for the file).
    """
    if sector_size not in SECTOR_SIZES:
        raise ValueError(f"sector_size must be one of {SECTOR_SIZES}, got {sector_size}")
    args = ["--find", "--show", "--sector-size", str(sector_size)]
    if direct_io:
        args.append("--direct-io=on")
    if read_only:
        args.append("--read-only")
    args.append(os.fspath(path))
    out = (await _losetup(args)).strip()
    if not out.startswith("/dev/"):
        raise LoopError([LOSETUP, *args], 0, "", f"unexpected output {out!r}")
    return out


async def detach(device: str) -> None:
    """Detach a loop device. The kernel defers it while the device is still open.

    Raises:
        LoopError: not a loop device, or not attached.
    """
    await _losetup(["--detach", device])


LOOP_SET_CAPACITY = 0x4C07  # <linux/loop.h>


def _set_capacity_blocking(device: str) -> None:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY)
    finally:
        os.close(fd)


async def set_capacity(device: str) -> None:
    """Make the device see its backing file's current size (what ``losetup -c`` does).

    The LOOP_SET_CAPACITY ioctl in a worker thread: no process start on the extend path
    (``losetup -c`` cost 10-20 ms here, and more under load).

    Raises:
        LoopError: not an attached loop device.
    """
    try:
        await anyio.to_thread.run_sync(_set_capacity_blocking, device)
    except OSError as err:
        raise LoopError(["ioctl", device, "LOOP_SET_CAPACITY"], -1, "",
                        reason=err.strerror or str(err)) from err


def parse_list(text: str) -> list[LoopDevice]:
    """Parse ``losetup --json --list`` output (empty text means no devices).

    Raises:
        ValueError: the text is not the JSON losetup prints.
    """
    if not text.strip():
        return []
    try:
        doc: Any = boundedjson.loads(text, 8)
        rows = doc["loopdevices"]
        devices = [
            LoopDevice(
                name=str(row["name"]),
                backing_file=str(row.get("back-file") or ""),
                sector_size=int(row.get("log-sec") or 512),
                direct_io=_flag(row.get("dio")),
                read_only=_flag(row.get("ro")),
            )
            for row in rows
        ]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"unexpected losetup --json output: {str(err)[:200]}") from None
    for dev in devices:
        if not dev.name.startswith("/dev/") or "\x00" in dev.name + dev.backing_file:
            raise ValueError(f"unexpected losetup --json output: device {dev.name[:64]!r}")
        if dev.sector_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"unexpected losetup --json output: sector size {dev.sector_size}")
    return devices


def _flag(value: object) -> bool:
    if isinstance(value, str):  # older util-linux prints "0"/"1"
        return value not in ("0", "", "false")
    return bool(value)


async def list_devices(path: str | os.PathLike[str] | None = None) -> list[LoopDevice]:
    """All attached loop devices, or only those backed by ``path``.

    Raises:
        LoopError: losetup failed or printed something unparsable.
    """
    args = ["--json", "--list"]
    if path is not None:
        args += ["--associated", os.fspath(path)]
    text = await _losetup(args)
    try:
        return parse_list(text)
    except ValueError as err:
        raise LoopError([LOSETUP, *args], 0, "", str(err)) from err


async def devices_for(path: str | os.PathLike[str]) -> list[str]:
    """The loop devices (``/dev/loopN``) backed by ``path``, sorted by name."""
    real = await anyio.to_thread.run_sync(Path(path).resolve)
    devices = await list_devices(real)
    return sorted(dev.name for dev in devices)


async def device_info(device: str) -> LoopDevice:
    """What ``losetup`` reports about one attached device.

    Raises:
        LoopError: the device is not an attached loop device.
    """
    args = ["--json", "--list", device]
    text = await _losetup(args)
    try:
        rows = parse_list(text)
    except ValueError as err:
        raise LoopError([LOSETUP, *args], 0, "", str(err)) from err
    if not rows:
        raise LoopError([LOSETUP, *args], 0, "", "not an attached loop device")
    return rows[0]


def size_of(device: str) -> int:
    """The current size in bytes the kernel reports for a block device (sysfs, no I/O)."""
    name = Path(device).name
    try:
        sectors = int(Path(f"/sys/class/block/{name}/size").read_text().strip()[:24])
        if not 0 <= sectors < (1 << 54):  # bytes < 2**63
            raise ValueError(f"size {sectors} sectors is out of range")
    except (OSError, ValueError) as err:
        raise LoopError(["cat", f"/sys/class/block/{name[:64]}/size"], -1, "", str(err)) from err
    return sectors * 512


__all__ = [
    "LoopDevice",
    "LoopError",
    "attach",
    "detach",
    "device_info",
    "devices_for",
    "list_devices",
    "parse_list",
    "set_capacity",
    "size_of",
]
