"""The ``loop`` volume backend, for machines without device-mapper (this lab, CI, the demo).

Each LV is a sparse file ``<root>/<vg>/<lv>`` attached to a loop device. Extending grows the
file (rounded up to ``extent_size``, never shrinking; the check and the truncate happen
under an exclusive ``flock`` on the file, so concurrent extenders in several processes
cannot shrink it). Refresh is ``losetup -c`` on every loop device of this host backed by the
file, so a host that has not refreshed still sees the old size, as with real LVs.

Per-host views: on a real host each LV has its own device-mapper table, and ``lvchange
--refresh`` reloads only that host's. Several lab "hosts" share one machine, so a backend
given a ``host`` name (config ``[volumes] loop_host``) owns only the loop devices it attached
itself: each attach is recorded as ``<root>/@views/<host>/loopN`` holding the device's
``diskseq`` and backing file. Its refresh, size and device lookups see only those devices, so
another host's extend and refresh leave this host's view at the old size until this host
refreshes. Without a host name, every loop device of the file on this machine is this host's
(one host per machine, as in production).

Device lookups read ``/sys/block/loop*/loop/backing_file`` (no subprocess, no disk I/O).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from autoextend.errors import NotSpmError
from autoextend.lvm import loopdev
from autoextend.lvm.errors import VolumeExists, VolumeNotFound, VolumeSpaceError
from autoextend.lvm.names import round_up_to_extent
from autoextend.names import check_name, is_valid_name
from autoextend.volumes import ExtendResult, SpmAuthority, VgFigures, VolumeRef

SYS_BLOCK = Path("/sys/block")
_DELETED = " (deleted)"
VIEWS_DIR = "@views"  # under the root; "@" is not allowed in VG names, so never a VG


VG_SIZE_FILE = ".vg_size"  # optional: the VG's capacity in bytes (decimal text)


def vg_capacity(vg_dir: str) -> int | None:
    """The capacity a loop "VG" was given (``<vg_dir>/.vg_size``), or None (unlimited)."""
    try:
        with open(os.path.join(vg_dir, VG_SIZE_FILE)) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise VolumeSpaceError(f"{vg_dir}/{VG_SIZE_FILE}: not a size in bytes: {text[:40]!r}")
    return int(text)


def vg_used(vg_dir: str) -> int:
    """Bytes given to the LVs (the files' apparent sizes, as LV sizes are)."""
    total = 0
    with os.scandir(vg_dir) as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                total += entry.stat().st_size
    return total


def _grow_file(path: str, size: int) -> tuple[int, bool, int]:
    """Grow ``path`` to ``size`` under an exclusive flock on its VG; never shrink, never
    past the VG's capacity (VolumeSpaceError). Returns (size, changed, size before)."""
    vg_dir = os.path.dirname(path)
    lock = os.open(vg_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            current = os.fstat(fd).st_size
            if current >= size:
                return current, False, current
            capacity = vg_capacity(vg_dir)
            if capacity is not None:
                free = capacity - vg_used(vg_dir)
                if size - current > free:
                    raise VolumeSpaceError(
                        f"VG {os.path.basename(vg_dir)}: {size - current} bytes needed,"
                        f" {max(free, 0)} free"
                    )
            os.ftruncate(fd, size)
            return size, True, current
        finally:
            os.close(fd)
    finally:
        os.close(lock)


def _shrink_file(path: str, size: int) -> tuple[int, bool]:
    """Shrink ``path`` to ``size`` under the VG's flock; never grow."""
    vg_dir = os.path.dirname(path)
    lock = os.open(vg_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            current = os.fstat(fd).st_size
            if current <= size:
                return current, False
            os.ftruncate(fd, size)
            return size, True
        finally:
            os.close(fd)
    finally:
        os.close(lock)


def _vg_free(vg_dir: str) -> int | None:
    capacity = vg_capacity(vg_dir)
    return None if capacity is None else max(0, capacity - vg_used(vg_dir))


def _vg_figures(root: str, vgs: Sequence[str]) -> list[VgFigures]:
    """Each loop VG's capacity and what its LVs' files leave of it (a VG without a capacity,
    or without a directory, has no figures)."""
    out = []
    for vg in vgs:
        if not is_valid_name(vg):
            continue
        vg_dir = os.path.join(root, vg)
        try:
            capacity = vg_capacity(vg_dir)
            if capacity is None:
                continue
            used = vg_used(vg_dir)
        except FileNotFoundError:
            continue
        out.append(VgFigures(vg, capacity, max(0, capacity - used)))
    return out


def _create_file(path: str, size: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def attached_devices(sys_block: Path = SYS_BLOCK) -> dict[str, str]:
    """``{"/dev/loopN": backing file}`` for every attached loop device (sysfs only)."""
    found: dict[str, str] = {}
    root = os.fspath(sys_block)
    try:  # os, not pathlib: this runs on every refresh, over every loop device's entry
        names = [n for n in os.listdir(root) if n.startswith("loop")]
    except OSError:
        return found
    for name in names:
        try:
            with open(f"{root}/{name}/loop/backing_file") as f:
                backing = f.read().rstrip("\n")
        except OSError:
            continue  # not attached (no loop/ entry), or detached meanwhile
        if backing.endswith(_DELETED):
            continue
        found[f"/dev/{name}"] = backing
    return found


def _diskseq(device: str, sys_block: Path = SYS_BLOCK) -> str:
    """The kernel's disk sequence number of the device (new at every attach), or "" when
    the kernel has none (before Linux 5.15)."""
    try:
        return (sys_block / Path(device).name / "diskseq").read_text().strip()[:24]
    except OSError:
        return ""


def _record_view(view_dir: str, device: str, backing: str) -> None:
    """Record that this host attached ``device`` over ``backing`` (atomic replace)."""
    os.makedirs(view_dir, exist_ok=True)
    name = Path(device).name
    tmp = os.path.join(view_dir, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{_diskseq(device)} {backing}\n")
    os.replace(tmp, os.path.join(view_dir, name))


def _view_devices(view_dir: str, sys_block: Path = SYS_BLOCK) -> dict[str, str]:
    """``{"/dev/loopN": backing file}`` for the devices recorded in ``view_dir`` that are
    still the very attachment recorded (same backing file and diskseq); stale records of
    detached or re-used devices are ignored."""
    found: dict[str, str] = {}
    attached = attached_devices(sys_block)
    try:
        entries = [e.name for e in os.scandir(view_dir)
                   if e.name.startswith("loop") and e.is_file()]
    except FileNotFoundError:
        return found
    for name in entries:
        try:
            with open(os.path.join(view_dir, name)) as f:
                seq, _, backing = f.read(8192).rstrip("\n").partition(" ")
        except OSError:
            continue
        device = f"/dev/{name}"
        if attached.get(device) == backing and _diskseq(device, sys_block) == seq:
            found[device] = backing
    return found


def _forget_views(view_dir: str, backing: str) -> None:
    """Drop this host's records of devices over ``backing``."""
    try:
        entries = [e.name for e in os.scandir(view_dir) if e.name.startswith("loop")]
    except FileNotFoundError:
        return
    for name in entries:
        path = os.path.join(view_dir, name)
        try:
            with open(path) as f:
                if f.read(8192).rstrip("\n").partition(" ")[2] != backing:
                    continue
            os.unlink(path)
        except OSError:
            continue


class LoopVolumeBackend:
    """:class:`~autoextend.volumes.VolumeBackend` over sparse files and loop devices.

    ``authority`` gates the writes (extend, create, remove) exactly as for the lvm backend;
    None means this host may not write (extend raises NotSpmError). ``host`` names this
    host's view (see the module docs); "" means every loop device on the machine.
    """

    def __init__(
        self, root: str, extent_size: int, authority: SpmAuthority | None = None,
        host: str = "",
    ) -> None:
        if extent_size <= 0:
            raise ValueError(f"extent size must be positive, got {extent_size}")
        self.root = os.path.realpath(root)
        self.extent_size = extent_size
        self._authority = authority
        self.host = host
        self.view_dir = (
            os.path.join(self.root, VIEWS_DIR, check_name("host", host)) if host else None)

    def _check(self) -> None:
        if self._authority is None:
            raise NotSpmError("this host may not change volumes (no authority)")
        self._authority.check()

    def check_writable(self) -> None:
        """Raises NotSpmError unless this backend may change volumes now
        (``loop_pool.py``'s ops check it as lvm2 commands check the term)."""
        self._check()

    def file_path(self, volume: VolumeRef) -> str:
        return os.path.join(self.root, check_name("VG", volume.vg), check_name("LV", volume.lv))

    async def vg_extent_size(self, vg: str) -> int:
        """The fixed extent size every file is rounded to (``volumes.KnowsExtent``)."""
        return self.extent_size

    def _volume_of_file(self, path: str) -> VolumeRef | None:
        vg_dir, lv = os.path.split(path)
        root, vg = os.path.split(vg_dir)
        if root != self.root or not (is_valid_name(vg) and is_valid_name(lv)):
            return None
        return VolumeRef(vg, lv)

    def _devices_of(self, volume: VolumeRef) -> list[str]:
        """This host's loop devices over the volume's file."""
        return self.devices_over(self.file_path(volume))

    def devices_over(self, path: str) -> list[str]:
        """This host's loop devices over ``path`` (a file under the root: a volume, or a
        VG's ``.pv``; blocking, reads sysfs)."""
        return sorted(dev for dev, backing in self._mine().items() if backing == path)

    def _mine(self) -> dict[str, str]:
        """``{"/dev/loopN": backing file}`` for this host's attached loop devices."""
        return attached_devices() if self.view_dir is None else _view_devices(self.view_dir)

    async def attach_view(self, path: str) -> str:
        """Attach a loop device of this host's own over ``path`` (recorded in its view):
        the lab's per-host view of a VG's ``.pv`` (``loop_pool.device_views``)."""
        return await self._attach(await anyio.to_thread.run_sync(os.path.realpath, path))

    async def _attach(self, path: str) -> str:
        device = await loopdev.attach(path)
        if self.view_dir is not None:
            await anyio.to_thread.run_sync(_record_view, self.view_dir, device, path)
        return device

    def _resize_target(self, volume: VolumeRef, size: int) -> tuple[int, str]:
        """A resize's size (rounded up to the extent) and the volume's file; checks both."""
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self._check()
        return round_up_to_extent(size, self.extent_size), self.file_path(volume)

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        target, path = self._resize_target(volume, size)
        try:
            new_size, changed, before = await anyio.to_thread.run_sync(_grow_file, path, target)
        except FileNotFoundError as err:
            raise VolumeNotFound(str(volume), path) from err
        return ExtendResult(new_size, changed, before)

    async def extend_and_refresh(
        self, volume: VolumeRef, size: int
    ) -> tuple[ExtendResult, int, dict[str, float]]:
        """:meth:`extend` then :meth:`refresh` in one worker-thread hop (the local
        extender's path): the result, the size this host sees, and the phases (seconds)."""
        target, path = self._resize_target(volume, size)

        def work() -> tuple[ExtendResult, int, dict[str, float]]:
            t0 = time.perf_counter()
            try:
                new_size, changed, before = _grow_file(path, target)
            except FileNotFoundError as err:
                raise VolumeNotFound(str(volume), path) from err
            t1 = time.perf_counter()
            seen = self._refresh_blocking(volume, path)
            t2 = time.perf_counter()
            return ExtendResult(new_size, changed, before), seen, {"extend": t1 - t0,
                                                          "refresh": t2 - t1}

        return await anyio.to_thread.run_sync(work)

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Shrink to ``size`` rounded up to the extent size (never grows), then refresh this
        host's loop devices. The caller made sure nothing uses the data past ``size``."""
        target, path = self._resize_target(volume, size)
        try:
            new_size, changed = await anyio.to_thread.run_sync(_shrink_file, path, target)
        except FileNotFoundError as err:
            raise VolumeNotFound(str(volume), path) from err
        if changed:
            for device in await anyio.to_thread.run_sync(self._devices_of, volume):
                await loopdev.set_capacity(device)
        return ExtendResult(new_size, changed)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        """Every path through which a process on this machine may hold the volume: its file
        and every loop device over it (any lab host's)."""
        path = self.file_path(volume)
        return [path, *sorted(d for d, b in attached_devices().items() if b == path)]

    async def refresh(self, volume: VolumeRef) -> int:
        """``LOOP_SET_CAPACITY`` on this host's devices of the volume (sysfs and an ioctl,
        no losetup process), then the size this host sees: one worker-thread hop."""
        path = self.file_path(volume)

        def work() -> int:
            if not os.path.exists(path):
                raise VolumeNotFound(str(volume), path)
            return self._refresh_blocking(volume, path)

        return await anyio.to_thread.run_sync(work)

    def _refresh_blocking(self, volume: VolumeRef, path: str) -> int:
        """``LOOP_SET_CAPACITY`` on this host's devices over ``path``; the size it sees."""
        devices = self.devices_over(path)
        for device in devices:
            try:
                loopdev._set_capacity_blocking(device)
            except OSError as err:
                raise loopdev.LoopError(["ioctl", device, "LOOP_SET_CAPACITY"], -1, "",
                                        reason=err.strerror or str(err)) from err
        return self._size_over(volume, path, devices)

    async def size(self, volume: VolumeRef) -> int:
        """The attached device's size on this host, or the file size when not attached (in a
        worker thread: finding the devices reads every loop device's sysfs entry)."""
        path = self.file_path(volume)
        return await anyio.to_thread.run_sync(
            lambda: self._size_over(volume, path, self.devices_over(path)))

    def _size_over(self, volume: VolumeRef, path: str, devices: list[str]) -> int:
        if devices:
            return loopdev.size_of(devices[0])
        try:
            return os.stat(path).st_size
        except FileNotFoundError as err:
            raise VolumeNotFound(str(volume), path) from err

    async def loop_views(self, volumes: Sequence[VolumeRef]) -> dict[VolumeRef, tuple[int, int]]:
        """``{volume: (this host's view, the file's size)}`` for every volume of
        ``volumes`` that exists, in one worker-thread hop and one scan of the loop devices
        (the view check's full audit reads a thousand volumes at once: one scan each made
        that quadratic). Each file's size (the "metadata") is read before any view, so a
        view grown meanwhile is never set against an older metadata size."""
        paths = {volume: self.file_path(volume) for volume in volumes}

        def work() -> dict[VolumeRef, tuple[int, int]]:
            metadata: dict[VolumeRef, int] = {}
            for volume, path in paths.items():
                with contextlib.suppress(FileNotFoundError):
                    metadata[volume] = os.stat(path).st_size
            mine = self._mine()
            by_file: dict[str, list[str]] = {}
            for device, backing in sorted(mine.items()):
                by_file.setdefault(backing, []).append(device)
            found: dict[VolumeRef, tuple[int, int]] = {}
            for volume, size in metadata.items():
                devices = by_file.get(paths[volume], [])
                try:
                    found[volume] = (loopdev.size_of(devices[0]) if devices else size, size)
                except loopdev.LoopError:
                    continue  # detached meanwhile: the next audit reads it again
            return found

        return await anyio.to_thread.run_sync(work)

    async def metadata_size(self, volume: VolumeRef) -> int:
        """The file's size: what an "lvextend" on any host made it (the loop stand-in's
        metadata)."""
        path = self.file_path(volume)
        try:
            stat = await anyio.Path(path).stat()
        except FileNotFoundError as err:
            raise VolumeNotFound(str(volume), path) from err
        return stat.st_size

    def lookup(self, path: str) -> VolumeRef | None:
        name = os.path.basename(path)
        if path == f"/dev/{name}" and name.startswith("loop"):
            try:
                backing = (SYS_BLOCK / name / "loop" / "backing_file").read_text().rstrip("\n")
            except OSError:
                return None
            return self._volume_of_file(backing)
        return self._volume_of_file(os.path.realpath(path)) if path.startswith("/") else None

    def device_path(self, volume: VolumeRef) -> str:
        """The loop device of ``volume`` on this host (see :meth:`attach` to attach one)."""
        devices = self._devices_of(volume)
        if not devices:
            raise VolumeNotFound(str(volume), "not attached to a loop device on this host")
        return devices[0]

    async def attach(self, volume: VolumeRef) -> str:
        """The volume's loop device on this host, attaching the file if needed."""
        devices = self._devices_of(volume)
        if devices:
            return devices[0]
        path = self.file_path(volume)
        if not await anyio.Path(path).exists():
            raise VolumeNotFound(str(volume), path)
        return await self._attach(path)

    async def detach(self, volume: VolumeRef) -> None:
        """Detach this host's loop devices of ``volume`` (other hosts' stay attached)."""
        for device in await anyio.to_thread.run_sync(self._devices_of, volume):
            await loopdev.detach(device)
        if self.view_dir is not None:
            await anyio.to_thread.run_sync(_forget_views, self.view_dir, self.file_path(volume))

    async def create(self, volume: VolumeRef, size: int, attach: bool = True) -> str | None:
        """Create the volume's sparse file (``size`` rounded up to extents), attach it and
        return the loop device (None with ``attach=False``)."""
        self._check()
        path = self.file_path(volume)
        target = round_up_to_extent(size, self.extent_size)
        try:
            await anyio.to_thread.run_sync(_create_file, path, target)
        except FileExistsError as err:
            raise VolumeExists(str(volume), path) from err
        return await self._attach(path) if attach else None

    async def remove(self, volume: VolumeRef) -> None:
        """Detach every loop device of the volume on this machine (every lab host's: an LV
        is removed once no host has it open) and delete its file."""
        self._check()
        path = self.file_path(volume)
        for device in await loopdev.devices_for(path):
            await loopdev.detach(device)
        if self.view_dir is not None:
            await anyio.to_thread.run_sync(_forget_views, self.view_dir, path)
        try:
            os.unlink(path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise
            raise VolumeNotFound(str(volume), path) from err

    async def free_bytes(self, vg: str) -> int | None:
        """Free bytes in the VG (None: the loop VG has no capacity set)."""
        vg_dir = os.path.join(self.root, check_name("VG", vg))
        return await anyio.to_thread.run_sync(_vg_free, vg_dir)

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        """``volumes.ReportsVgFigures``: the loop VGs that have a capacity (``.vg_size``)."""
        return await anyio.to_thread.run_sync(_vg_figures, self.root, list(vgs))

    async def set_vg_capacity(self, vg: str, size: int | None) -> None:
        """Give a loop VG a capacity (None removes it): lab and tests ("VG full")."""
        self._check()
        path = os.path.join(self.root, check_name("VG", vg), VG_SIZE_FILE)

        def write() -> None:
            if size is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{size}\n")
            os.replace(tmp, path)

        await anyio.to_thread.run_sync(write)

    async def aclose(self) -> None:
        return None
