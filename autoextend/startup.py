"""The start-up error path: every part the service starts is started inside :func:`step`.

What the machine refuses while a part starts (an ``OSError``: a port in use, an address not
on this host, a socket directory under a regular file) becomes a :class:`StartupError` that
names the part and the reason; the CLI prints it as one line and exits 1. Config mistakes are
caught before this by :mod:`autoextend.validation` (exit 2); errors that already say what
failed (an ``AutoextendError`` such as a lease area that is not formatted) pass unchanged.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from autoextend.errors import StartupError
from autoextend.metadata_area import LEASE_AREA_SIZE


def os_reason(exc: OSError) -> str:
    """``exc`` as a short reason: what the OS said, and about which path."""
    name = exc.filename
    if name is not None and exc.errno in (errno.EEXIST, errno.ENOTDIR) and not os.path.isdir(
        name
    ):
        return f"{name} is not a directory"
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    return f"{reason}: {name}" if name is not None else reason


@contextmanager
def step(what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while ``what`` starts into a one-line StartupError."""
    try:
        yield
    except OSError as exc:
        raise StartupError(what, os_reason(exc)) from exc


async def check_control_socket_free(path: str) -> None:
    """Refuse to start when another service answers on ``path`` (starting would unlink its
    socket and leave two services extending the same volumes), or when something that is not
    a socket is in the way."""
    try:
        mode = (await anyio.Path(path).stat()).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a socket"
        raise StartupError(f"control socket {path}",
                           f"the path exists and is {kind} (remove it or set another"
                           " service.control_socket)")
    try:
        with anyio.fail_after(2.0):
            stream = await anyio.connect_unix(path)
    except (OSError, TimeoutError):
        return  # nothing listens there (absent, stale, or not a socket: serve() decides)
    await stream.aclose()
    raise StartupError(f"control socket {path}",
                       "another autoextend service is listening on it (stop it first)")


def check_metadata_area(path: str) -> None:
    """Refuse a lease path that cannot be a metadata area, before any sector I/O: absent, a
    directory, not a file or block device, or empty. (Blocking: call it in a thread.)"""
    what = f"lease.path {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StartupError(what, "does not exist (create the shared metadata area and format"
                                 " it once with `autoextend lease init`)") from None
    except OSError as exc:
        raise StartupError(what, os_reason(exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise StartupError(what, "is a directory, not the shared metadata area")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise StartupError(what, "is neither a regular file nor a block device")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise StartupError(what, "is empty (format it once with `autoextend lease init`)")


def check_volume_backend(backend: str, lvm_binary: str) -> None:
    """The lvm2 binary must exist before the first extension needs it."""
    if backend == "lvm" and shutil.which(lvm_binary) is None:
        raise StartupError(f"lvm.lvm_binary {lvm_binary}",
                           "not found (neither a path to an executable nor on PATH)")


def check_lease_area_fits(path: str, offset: int, storage_size: int) -> None:
    """The lease area (``[lease] offset`` + 4 MiB) must lie within the metadata area."""
    end = offset + LEASE_AREA_SIZE
    if end > storage_size:
        raise StartupError(
            f"lease.offset {offset}",
            f"the lease area ({offset}..{end}) lies beyond the end of {path}"
            f" ({storage_size} bytes)",
        )
