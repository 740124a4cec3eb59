"""A FUSE file system whose files fail with EIO on demand: a fault source that libvirt
attaches as an ordinary ``<disk type='file'>``.

``python -m autoextend.lab.faultfs BACKING_DIR MOUNTPOINT`` mounts ``BACKING_DIR``'s regular
files at ``MOUNTPOINT`` (a flat passthrough: read, write, truncate, fsync). While the flag
file ``BACKING_DIR/NAME.fail`` exists, every read, write and fsync of ``MOUNTPOINT/NAME``
fails with EIO, as on a failed path to a SAN (opening and closing still work); remove it
and the same requests succeed again. While ``BACKING_DIR/NAME.slow`` exists, each read of
``MOUNTPOINT/NAME`` first waits the seconds it holds (reads are served one at a time, so
this bounds the file's read rate: a slow source disk that holds a block job open). The
flags are looked at on every request, so :meth:`FaultFs.fail`, :meth:`FaultFs.slow` and
:meth:`FaultFs.heal` take effect for the next request. Flag files are not shown in the
mount.

Mount namespaces: the lab libvirtd runs in its own (``lab/libvirtd_ns.py``, private
propagation), which copies the mounts present when it starts. Mount the file system
*before* starting the libvirtd that runs domains on it, so that QEMU (in libvirtd's
namespace) and autoextend's storage probe (in this one) read the same files.

:func:`fault_fs` mounts it from a test (fusepy over libfuse2, in a child process) and always
unmounts it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from autoextend.errors import LabError
from autoextend.lab import proc
from autoextend.lab.errors import CommandError
from autoextend.lab.waiting import until
from autoextend.logs import get_logger

log = get_logger("lab.faultfs")

FLAG_SUFFIX = ".fail"
SLOW_SUFFIX = ".slow"
MOUNT_TIMEOUT_S = 30.0


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is a FUSE mount in this mount namespace."""
    target = str(mountpoint)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target and line.split()[2].startswith("fuse")
                   for line in mounts if len(line.split()) > 2)


def _operations(backing: Path, tag: str = "") -> Any:
    """The fusepy Operations of the file system (fusepy imported here: lab-only dependency).
    With ``tag``, the flag ``NAME.TAG.fail`` fails this mount's ``NAME`` only (one host's path
    to a shared file, when each host mounts the same backing directory with its own tag)."""
    from fuse import FuseOSError, LoggingMixIn, Operations  # noqa: F401 (LoggingMixIn: debug)

    lock = threading.Lock()

    def flag(name: str) -> bool:
        return name.endswith((FLAG_SUFFIX, SLOW_SUFFIX))

    def real(path: str) -> str:
        name = path.lstrip("/")
        if "/" in name or flag(name):
            raise FuseOSError(errno.ENOENT)
        return str(backing / name) if name else str(backing)

    def check(path: str) -> None:
        base = str(backing / path.lstrip("/"))
        if os.path.exists(base + FLAG_SUFFIX) or (
                tag and os.path.exists(f"{base}.{tag}{FLAG_SUFFIX}")):
            raise FuseOSError(errno.EIO)

    def delay(path: str) -> float:
        try:
            with open(str(backing / path.lstrip("/")) + SLOW_SUFFIX) as f:
                return max(0.0, min(float(f.read().strip() or 0), 10.0))
        except (OSError, ValueError):
            return 0.0

    class FaultOps(Operations):  # type: ignore[misc]  # fusepy is untyped
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            try:
                st = os.lstat(real(path))
            except OSError as err:
                raise FuseOSError(err.errno) from None
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
                    "st_mtime_ns", "st_ctime_ns")
            attrs = {key.replace("_ns", ""): getattr(st, key) for key in keys}
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            names = [n for n in os.listdir(backing) if not flag(n)
                     and os.path.isfile(backing / n)]
            return [".", "..", *names]

        def open(self, path: str, flags: int) -> int:
            return os.open(real(path), flags & ~os.O_DIRECT)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            check(path)
            wait = delay(path)
            with lock:
                if wait:
                    time.sleep(wait)  # the slow flag: time is the point
                return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            check(path)
            with lock:
                return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            os.truncate(real(path), length)

        def flush(self, path: str, fh: int) -> None:
            pass  # close() succeeds: only I/O fails, as on a broken path to a SAN

        def fsync(self, path: str, datasync: bool, fh: int) -> None:
            check(path)
            os.fdatasync(fh) if datasync else os.fsync(fh)

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

    return FaultOps()


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: python -m autoextend.lab.faultfs BACKING_DIR MOUNTPOINT [TAG]",
              file=sys.stderr)
        return 2
    from fuse import FUSE

    backing, mountpoint = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    tag = argv[3] if len(argv) == 4 else ""
    # multithreaded: QEMU's I/O threads, the probe and the lab read at once
    FUSE(_operations(backing, tag), str(mountpoint), foreground=True, nothreads=False,
         allow_other=True, direct_io=True)
    return 0


@dataclass
class FaultFs:
    """A mounted :mod:`faultfs`: ``path(name)`` is the file to attach, ``fail``/``heal``."""

    backing: Path
    mountpoint: Path
    process: Process
    tag: str = ""

    def path(self, name: str) -> Path:
        return self.mountpoint / name

    def create(self, name: str, size: int) -> Path:
        """A sparse ``size``-byte file ``name`` (blocking; small)."""
        with open(self.backing / name, "wb") as f:
            f.truncate(size)
        return self.path(name)

    def fail(self, name: str, *, this_mount: bool = False) -> None:
        """From the next request on, reads and writes of ``name`` fail with EIO (on every
        mount of the backing directory, or with ``this_mount`` on this tagged one only)."""
        self._flag(name, this_mount).touch()

    def slow(self, name: str, seconds: float) -> None:
        """From the next request on, each read of ``name`` first waits ``seconds``."""
        (self.backing / (name + SLOW_SUFFIX)).write_text(f"{seconds:g}")

    def heal(self, name: str, *, this_mount: bool = False) -> None:
        """From the next request on, reads and writes of ``name`` succeed again (at speed,
        unless ``this_mount``: then only this mount's failure ends)."""
        self._flag(name, this_mount).unlink(missing_ok=True)
        if not this_mount:
            (self.backing / (name + SLOW_SUFFIX)).unlink(missing_ok=True)

    def _flag(self, name: str, this_mount: bool) -> Path:
        if this_mount and not self.tag:
            raise ValueError("this mount has no tag")
        stem = f"{name}.{self.tag}" if this_mount else name
        return self.backing / (stem + FLAG_SUFFIX)

    async def stop(self) -> None:
        """Unmount (lazily: a QEMU may still hold a file) and end the process. Idempotent."""
        with anyio.CancelScope(shield=True):
            if await anyio.to_thread.run_sync(is_mounted, self.mountpoint):
                try:
                    await proc.run(["umount", "-l", str(self.mountpoint)])
                except CommandError as err:
                    log.warning("fault fs unmount failed", error=str(err))
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(10):
                    await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            log.info("fault fs unmounted", mountpoint=str(self.mountpoint))


@asynccontextmanager
async def fault_fs(directory: Path, backing: Path | None = None,
                   tag: str = "") -> AsyncIterator[FaultFs]:
    """A fault file system over ``backing`` (default ``directory/backing``) mounted at
    ``directory/mnt``; ``tag`` names this mount for :meth:`FaultFs.fail` ``(this_mount=True)``.

    Raises:
        LabError: it did not mount (libfuse2/fusepy missing, no ``/dev/fuse``).
    """
    backing = backing or directory / "backing"
    mountpoint = directory / "mnt"
    for d in (backing, mountpoint):
        await anyio.Path(d).mkdir(parents=True, exist_ok=True)
    out = await anyio.to_thread.run_sync(lambda: open(directory / "faultfs.log", "wb"))
    try:
        process = await anyio.open_process(
            [sys.executable, "-m", "autoextend.lab.faultfs", str(backing), str(mountpoint),
             *([tag] if tag else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    finally:
        out.close()
    fs = FaultFs(backing, mountpoint, process, tag)
    try:
        try:
            await until(lambda: process.returncode is not None or is_mounted(mountpoint),
                        MOUNT_TIMEOUT_S, "the fault file system mounted")
        except AssertionError as err:
            raise LabError(str(err)) from None
        if process.returncode is not None:
            text = (directory / "faultfs.log").read_text(errors="replace")[-1000:]
            raise LabError(f"the fault file system did not mount ({process.returncode}): {text}")
        log.info("fault fs mounted", mountpoint=str(mountpoint), pid=process.pid)
        yield fs
    finally:
        await fs.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
