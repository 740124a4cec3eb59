"""A minimal writer for the ``newc`` cpio format the Linux kernel unpacks as an initramfs.

Deterministic (inode numbers count up, mtime 0, owner root) so the same inputs give the same
bytes. Only what an initramfs needs: directories, regular files, symlinks, device nodes.
"""

from __future__ import annotations

import stat

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Collects entries in memory; :meth:`finish` returns the archive bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._done = False

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        if self._done:
            raise RuntimeError("archive already finished")
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        header = _MAGIC + b"".join(b"%08X" % value for value in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data, _pad4(len(data))]
        self._ino += 1

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """Append the trailer and return the whole archive."""
        self._entry(_TRAILER, 0)
        self._done = True
        return b"".join(self._parts)
