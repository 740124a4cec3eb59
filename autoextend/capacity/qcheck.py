"""``qemu-img check --output=json`` and who holds a device open (host side of a reduce)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

from autoextend import boundedjson
from autoextend.errors import AutoextendError

MAX_NUMBER = (1 << 63) - 1


class ImageCheckError(AutoextendError):
    """qemu-img could not check the image, or its report makes no sense."""


@dataclass(frozen=True)
class ImageCheck:
    image_end_offset: int
    corruptions: int
    leaks: int
    check_errors: int

    @property
    def consistent(self) -> bool:
        """No corruption and no check error (leaked clusters only waste space)."""
        return self.corruptions == 0 and self.check_errors == 0


def parse_check(text: str) -> ImageCheck:
    """Strict parse of qemu-img's JSON report; ValueError for anything else."""
    doc = boundedjson.loads(text.encode(), 8)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")

    def number(key: str, required: bool) -> int:
        value = doc.get(key, None if required else 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NUMBER:
            raise ValueError(f"{key}: not a number in range (got {str(value)[:40]!r})")
        return value

    return ImageCheck(number("image-end-offset", True), number("corruptions", False),
                      number("leaks", False), number("check-errors", False))


async def check_image(path: str, qemu_img: str = "qemu-img") -> ImageCheck:
    """Run ``qemu-img check`` (it exits 2 for corruptions, 3 for leaks, with a report)."""
    argv = [qemu_img, "check", "--output=json", "-f", "qcow2", path]
    try:
        result = await anyio.run_process(argv, check=False)
    except OSError as exc:
        raise ImageCheckError(f"cannot run {qemu_img}: {exc.strerror or exc}") from exc
    out = result.stdout.decode(errors="replace")
    if result.returncode in (0, 2, 3) and out.strip():
        try:
            return parse_check(out)
        except ValueError as exc:
            raise ImageCheckError(f"qemu-img check {path}: {exc}") from exc
    err = result.stderr.decode(errors="replace").strip().splitlines()
    raise ImageCheckError(f"qemu-img check {path} failed (exit {result.returncode})"
                          + (f": {err[-1][:200]}" if err else ""))


def _identity(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return ("blk", st.st_rdev, 0)
    return ("file", st.st_dev, st.st_ino)


def open_by(paths: list[str], proc: str = "/proc") -> list[tuple[int, str]]:
    """``(pid, command name)`` of every process that has any of ``paths`` open (fds only;
    blocking: run it in a thread)."""
    wanted = {i for i in (_identity(p) for p in paths) if i is not None}
    if not wanted:
        return []
    found: list[tuple[int, str]] = []
    hit: set[str] = set()
    for pid, fd_path in other_processes_fds(proc):
        if pid in hit or _identity(fd_path) not in wanted:
            continue
        hit.add(pid)
        try:
            with open(os.path.join(proc, pid, "comm")) as f:
                comm = f.read(64).strip()
        except OSError:
            comm = "?"
        found.append((int(pid), comm))
    return found


def other_processes_fds(proc: str = "/proc") -> Iterator[tuple[str, str]]:
    """(pid, ``/proc/PID/fd/N``) for every open file of every process but this one; a process
    gone meanwhile, or a kernel thread, is skipped. Blocking: run it in a thread."""
    me = str(os.getpid())
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or entry.name == me:
            continue
        fd_dir = os.path.join(proc, entry.name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or a kernel thread
        for fd in fds:
            yield entry.name, os.path.join(fd_dir, fd)
