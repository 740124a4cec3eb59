"""The pool ops (``spm/volumeops.py: PoolWriter``) on the loop stand-in, so the lab and the
demo run CREATE, REMOVE and GROW-PV like a real pool (issue 27).

An LV is a file ``<root>/<vg>/<lv>`` (``loop_backend.py``). What lvm2 keeps in the
metadata has a stand-in here:

- **Tags**: ``<root>/<vg>/.tags.<lv>``, one tag per line. A create writes the tags first
  (a new file renamed into place), then the LV's file with ``O_EXCL``: an SPM killed in
  between leaves tags and no LV, and the request served again writes them again and
  creates the file; an LV file never exists without its tags. A remove deletes the file,
  then its tags.
- **The PV**: ``<root>/<vg>/.pv``, a file standing for the VG's one LUN. Its size is the
  device's size; the VG's capacity (``.vg_size``) is the PV's size in the metadata. A
  GROW-PV (``pvresize``) sets the capacity to the file's size, in whole extents, when the
  file grew past it. A VG without ``.pv`` (or without a capacity) has no PV to grow.
  A lab host sees the file's size (``device_views``), unless it attached a loop device of
  its own over ``.pv`` (``LoopVolumeBackend.attach_view``, a host with ``[volumes]
  loop_host``): then it sees that device's size, which stays the old one until that host
  rescans it (``losetup -c``), as a host's kernel keeps a LUN's old size
  (``tests/e2e/test_pool_grow_views_lab.py``; with real lvm2:
  ``tests/lvm/test_grow_views_lvm.py``).

Every change checks the backend's authority first (the SPM's term), as lvm2 commands do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from autoextend.lvm import loopdev
from autoextend.lvm.errors import VolumeExists
from autoextend.lvm.loop_backend import VG_SIZE_FILE, LoopVolumeBackend, vg_capacity
from autoextend.lvm.names import round_up_to_extent
from autoextend.lvm.vsize import vsize_tag
from autoextend.names import check_name
from autoextend.volumes import VolumeBackend, VolumeRef, innermost

PV_FILE = ".pv"
TAGS_PREFIX = ".tags."


@dataclass(frozen=True)
class LoopLv:
    size: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class LoopPv:
    """``lvm/report.py: PvGrowth``'s shape for the loop VG's ``.pv``."""

    name: str
    uuid: str
    device_size: int
    extent_count: int
    extent_size: int

    @property
    def room(self) -> int:
        return self.device_size // self.extent_size


def pv_uuid(vg: str) -> str:
    return f"loop-{vg}"


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LoopPoolWriter:
    """CREATE, REMOVE and GROW-PV on a :class:`LoopVolumeBackend` (its authority checked)."""

    def __init__(self, backend: LoopVolumeBackend) -> None:
        self._backend = backend

    def _vg_dir(self, vg: str) -> str:
        return os.path.join(self._backend.root, check_name("VG", vg))

    def _tags_path(self, volume: VolumeRef) -> str:
        return os.path.join(self._vg_dir(volume.vg), TAGS_PREFIX + check_name("LV", volume.lv))

    def _check(self) -> None:
        self._backend.check_writable()

    async def find_lv(self, volume: VolumeRef) -> LoopLv | None:
        path = self._backend.file_path(volume)
        tags_path = self._tags_path(volume)

        def look() -> LoopLv | None:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                return None
            try:
                with open(tags_path) as f:
                    tags = tuple(line.strip() for line in f if line.strip())
            except FileNotFoundError:
                tags = ()
            return LoopLv(size, tags)

        return await anyio.to_thread.run_sync(look)

    async def create_lv(self, volume: VolumeRef, size: int, tags: Sequence[str] = (),
                        activate: bool = False, *,
                        virtual_size: int | None = None) -> LoopLv:
        """The file (``size`` rounded up to extents, not attached) with its tags."""
        del activate  # a loop LV is attached by the host that opens it
        self._check()
        all_tags = [*tags, *([vsize_tag(virtual_size)] if virtual_size is not None else [])]
        path = self._backend.file_path(volume)
        tags_path = self._tags_path(volume)
        target = round_up_to_extent(size, self._backend.extent_size)

        def make() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                raise FileExistsError(path)
            _write_atomically(tags_path, "".join(f"{t}\n" for t in all_tags))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, target)
            finally:
                os.close(fd)

        try:
            await anyio.to_thread.run_sync(make)
        except FileExistsError as err:
            raise VolumeExists(str(volume), path) from err
        return LoopLv(target, tuple(all_tags))

    async def remove_lv(self, volume: VolumeRef) -> None:
        """Detach it everywhere on this machine, delete the file, then its tags."""
        await self._backend.remove(volume)  # checks the authority
        tags_path = self._tags_path(volume)

        def forget() -> None:
            try:
                os.unlink(tags_path)
            except FileNotFoundError:
                pass

        await anyio.to_thread.run_sync(forget)

    async def pv_growth(self, vg: str) -> list[LoopPv]:
        """The VG's PV (``.pv``), or none (no ``.pv`` or no capacity)."""
        vg_dir = self._vg_dir(vg)
        extent = self._backend.extent_size

        def look() -> list[LoopPv]:
            pv = os.path.join(vg_dir, PV_FILE)
            try:
                device = os.stat(pv).st_size
                capacity = vg_capacity(vg_dir)
            except FileNotFoundError:
                return []
            if capacity is None:
                return []
            return [LoopPv(pv, pv_uuid(vg), device, capacity // extent, extent)]

        return await anyio.to_thread.run_sync(look)

    async def grow_pvs(self, vg: str) -> list[LoopPv]:
        """``pvresize``: the capacity becomes the PV file's size (whole extents) when the
        file grew past it; the PVs resized (as they were before)."""
        grown = [pv for pv in await self.pv_growth(vg) if pv.room > pv.extent_count]
        if not grown:
            return []
        self._check()
        size = grown[0].room * grown[0].extent_size
        path = os.path.join(self._vg_dir(vg), VG_SIZE_FILE)
        await anyio.to_thread.run_sync(_write_atomically, path, f"{size}\n")
        return grown


async def device_views(root: str, vgs: Sequence[str],
                       host: LoopVolumeBackend | None = None) -> dict[str, int]:
    """A lab host's view of the loop VGs' PVs, ``{uuid: bytes}``: the ``.pv`` files' sizes,
    or, for a ``host`` with its own view (``loop_host``) that attached a loop device over a
    ``.pv`` (``attach_view``), that device's size as the kernel reports it."""

    def look() -> dict[str, int]:
        out: dict[str, int] = {}
        for vg in vgs:
            pv = os.path.join(root, check_name("VG", vg), PV_FILE)
            try:
                size = os.stat(pv).st_size
            except FileNotFoundError:
                continue
            own = ([] if host is None or host.view_dir is None
                   else host.devices_over(os.path.realpath(pv)))
            if own:
                try:
                    size = loopdev.size_of(own[0])
                except loopdev.LoopError:
                    continue  # no view: the SPM's gate refuses a grow (safe)
            if size > 0:
                out[pv_uuid(vg)] = size
        return out

    return await anyio.to_thread.run_sync(look)


def loop_pool_writer(backend: VolumeBackend) -> LoopPoolWriter | None:
    """The pool ops of ``backend`` when it is (or wraps) the loop stand-in, else None."""
    inner = innermost(backend)
    return LoopPoolWriter(inner) if isinstance(inner, LoopVolumeBackend) else None
