"""A full backing store for the backing-store-full tests over QMP and libvirt
(``tests/e2e/test_backing_full_qmp.py``, ``tests/libvirt_backend/test_backing_full_libvirt.py``;
a plain module, not a test module).

The VG's directory is a small tmpfs. :meth:`FullStore.fill` takes every free page of it
with a filler file, so the loop device fails the guest's writes with ENOSPC -- as a thin
array LUN that ran out of space does; :meth:`FullStore.free` grows the tmpfs and deletes the
filler. Fill it before the guest runs: a write that finds *some* free pages is written in
part, and the loop driver turns a short write into EIO, not ENOSPC.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from autoextend.lab import proc


@dataclass
class FullStore:
    path: Path

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def _fill(self) -> None:
        block = b"\xa5" * (64 << 10)
        with open(self.filler, "wb", buffering=0) as f:
            for size in (len(block), 4096):
                try:
                    while True:
                        f.write(block[:size])
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise

    async def fill(self) -> None:
        """Take every free page of the tmpfs (the filler file)."""
        await anyio.to_thread.run_sync(self._fill)

    async def free(self, size_mib: int) -> None:
        """Grow the tmpfs to ``size_mib`` and delete the filler (the array grown)."""
        await proc.run(["mount", "-o", f"remount,size={size_mib}M", str(self.path)])
        await anyio.to_thread.run_sync(self.filler.unlink)


@asynccontextmanager
async def small_tmpfs(path: Path, size_mib: int) -> AsyncIterator[FullStore]:
    """A tmpfs of ``size_mib`` mounted on ``path``; always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    await proc.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}M", "tmpfs", str(path)])
    try:
        yield FullStore(path)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.run_process(["umount", "-l", str(path)], check=False)


def full_warnings(logs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The "backing store full" warnings among captured log events."""
    return [e for e in logs if e.get("log_level") == "warning"
            and "backing store full" in str(e.get("event"))]
