"""Give space back: reduce a volume to what its image uses plus one chunk.

Host side of ``autoextend volume reduce VG/LV [--dry-run]`` (and ``[policy]
reduce_on_stop``), in this order; each refusal is one line (``ReduceRefused``, exit 1):

1. the volume's VG is in the pool (``[lvm] vgs`` when set);
2. no VM on this host has the volume as a drive (the monitor's view);
3. no process on this host has it open (every fd in ``/proc``; for loop volumes the file and
   every loop device over it);
4. ``qemu-img check`` reports no corruption; its ``image-end-offset`` is the image's end;
5. target = ``round_up(end + chunk, extent)`` (``figures.reduce_target``; never below the
   end, never above the current size); nothing to do when it is not smaller;
6. local mode: when the pool has a shared area (``[lease] path``), no other host that is
   not known dead lists the volume in its in-use record, and every such record is fresh
   (``sharedgate.py``: the SPM's rule and code); then the volume backend shrinks it (the
   LVM writer's ``lvreduce``, or the loop file); mailbox mode: a REDUCE request to the SPM,
   which answers OK for a volume already at or below the target and refuses one not yet
   reduced while its term is young or a host asked to extend it within ``hot_window_s``
   (``spm/reducing.py``).

``--dry-run`` stops before 6, and in mailbox mode asks the SPM the questions of 6 with a
REDUCE_CHECK request (it never acts): the dry run prints the verdict the reduce would get.
In local mode with a shared area it makes the one look of 6 (without the freshness rule).

What the host prints is true of the volume (:func:`settle`): when the SPM refused or did not
answer, the host reads the volume's size again before it answers. If the volume is at or
below the target anyway (an SPM reduced it and its answer was lost, or another host reduced
it), that is a success, saying so (exit 0); otherwise the refusal says whether the volume is
unchanged or changed anyway, and its size now (exit 1). Invariant: exit 0 and its line name
the volume's size after the command; exit 1 names it too.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import anyio

from autoextend.capacity.figures import reduce_target
from autoextend.capacity.qcheck import (
    ImageCheckError,
    check_image,
    open_by,
    other_processes_fds,
)
from autoextend.config import Settings
from autoextend.errors import AutoextendError
from autoextend.logs import get_logger
from autoextend.monitor import overrides
from autoextend.monitor.core import VolumeInUse
from autoextend.monitor.protocols import DriveInfo
from autoextend.names import is_valid_name
from autoextend.volumes import (
    FileBacked,
    KnowsExtent,
    VolumeBackend,
    VolumeRef,
    innermost,
)

log = get_logger("capacity")

# Mailbox mode: ask the SPM to reduce ``volume`` to ``size`` (``check``: only ask whether
# it would); the size it leaves (or would leave), or ReduceRefused / ReduceUnanswered.
RemoteReduce = Callable[[VolumeRef, int, bool], Awaitable[int]]

# Local mode with a shared area (``sharedgate.py``): why ``vg/lv`` must not shrink because
# of another host (``dry_run``: one look, no freshness rule), or None.
SharedRefusal = Callable[[str, bool], Awaitable[str | None]]


class ReduceBackend(VolumeBackend, Protocol):
    """What the reducer needs of the host's volume backend (``reduce`` and
    ``holders_paths`` are on every one; optional: ``KnowsExtent``, and ``FileBacked``
    under its ``Wraps`` layers)."""


class VolumesInUse(Protocol):
    """Who uses which volume on this host now: the monitor's typed query (asked under the
    reducer's lock, right before the other checks)."""

    def volumes_in_use(self) -> Sequence[VolumeInUse]: ...


class ReduceRefused(AutoextendError):
    def __init__(self, volume: VolumeRef, reason: str) -> None:
        self.volume = volume
        self.reason = reason
        super().__init__(f"cannot reduce {volume}: {reason}")


class ReduceUnanswered(ReduceRefused):
    """The SPM's answer did not come (timeout, the mailbox stopped): it may have acted."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def settle(volume: VolumeRef, before: int, target: int, refusal: ReduceRefused,
           now: int) -> tuple[int, str]:
    """What to say after the SPM refused or did not answer, given the volume's size read
    again (pure): ``(new_size, note)`` when the volume is at or below the target anyway (a
    success, exit 0); otherwise raises a ReduceRefused whose line ends with the size now."""
    if now <= target:
        return now, (f"{refusal.reason}; but the volume is at {_mib(now)} now: the reduce"
                     " was applied")
    if now == before:
        # Unanswered: a stalled SPM that is still valid may apply it later; asking again is
        # safe (a reduce is idempotent) and gives the outcome.
        later = ("; the SPM may still apply it: run the same reduce again for its outcome"
                 if isinstance(refusal, ReduceUnanswered) else "")
        raise type(refusal)(volume, f"{refusal.reason}; the volume is unchanged at"
                                    f" {_mib(now)}{later}") from refusal
    raise type(refusal)(volume, f"{refusal.reason}; the volume changed anyway:"
                                f" {_mib(before)} -> {_mib(now)}") from refusal


@dataclass(frozen=True)
class ReducePlan:
    volume: str
    size: int            # before
    image_end: int       # qemu-img check's image-end-offset
    target: int          # the size asked for
    new_size: int        # after (== size for a dry run or nothing to give back)
    given_back: int
    dry_run: bool
    note: str = ""       # how the outcome was known, when not from the SPM's OK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_volume(text: str) -> VolumeRef:
    """``VG/LV`` (ValueError otherwise)."""
    vg, sep, lv = text.partition("/")
    if not sep or not is_valid_name(vg) or not is_valid_name(lv):
        raise ValueError(f"expected VG/LV with valid LVM names, got {text[:80]!r}")
    return VolumeRef(vg, lv)


class Reducer:
    def __init__(
        self,
        backend: ReduceBackend,
        settings: Settings,
        *,
        remote: RemoteReduce | None = None,
        shared: SharedRefusal | None = None,
    ) -> None:
        """``settings``: ``[lvm] vgs`` (the pool) and ``[policy]`` (chunk, extent), replaced
        on reload; ``remote``: mailbox mode's request to the SPM (None: local mode, the
        backend reduces); ``shared``: local mode's look at the other hosts' in-use records
        when the pool has a shared area (``sharedgate.py``; asked right before the backend
        reduces, and by a dry run)."""
        self.backend = backend
        self.settings = settings
        self.remote = remote
        self.shared = shared if remote is None else None
        self.reduces = 0
        self.given_back = 0
        self._lock = anyio.Lock()

    async def reduce(self, volume: VolumeRef, users: VolumesInUse, *, dry_run: bool = False,
                     exclude_vm: str | None = None) -> ReducePlan:
        """Reduce ``volume`` (see the module docs); ``users``: the monitor, asked whether a
        VM (other than ``exclude_vm``) uses it. Raises ReduceRefused."""
        async with self._lock:
            return await self._reduce(volume, users, dry_run, exclude_vm)

    async def _reduce(self, volume: VolumeRef, users: VolumesInUse, dry_run: bool,
                      exclude_vm: str | None) -> ReducePlan:
        pool = self.settings.lvm.vgs
        if pool and volume.vg not in pool:
            raise ReduceRefused(volume, f"VG {volume.vg} is not in the pool ({', '.join(pool)})")
        for use in users.volumes_in_use():
            if use.volume == volume and use.vm != exclude_vm:
                raise ReduceRefused(volume, f"VM {use.vm} uses it (drive {use.drive})")
        try:
            paths = list(self.backend.holders_paths(volume))
        except AutoextendError as exc:
            raise ReduceRefused(volume, str(exc)) from exc
        holders = await anyio.to_thread.run_sync(open_by, paths)
        if holders:
            who = ", ".join(f"pid {pid} ({comm})" for pid, comm in holders[:3])
            raise ReduceRefused(volume, f"it is open on this host by {who}")
        image = self._image_path(volume, paths)
        try:
            check = await check_image(image)
        except ImageCheckError as exc:
            raise ReduceRefused(volume, str(exc)) from exc
        if not check.consistent:
            raise ReduceRefused(volume, f"qemu-img check found {check.corruptions} corruptions"
                                        f" and {check.check_errors} check errors")
        size = await self._size_now(volume)
        chunk, extent = await self._chunk_and_extent(volume)
        target = reduce_target(check.image_end_offset, size, chunk, extent, leaf=True)
        plan = ReducePlan(str(volume), size, check.image_end_offset, target, size, 0, dry_run)
        bound = log.bind(volume=str(volume))
        if dry_run and self.remote is not None and target < size:
            await self.remote(volume, target, True)  # the SPM's verdict (ReduceRefused)
        if self.shared is not None and target < size:
            why = await self.shared(str(volume), dry_run)  # another host's use (local mode)
            if why is not None:
                raise ReduceRefused(volume, f"{why}; the volume is unchanged at {_mib(size)}")
        if dry_run or target >= size:
            bound.info("reduce planned" if dry_run else "nothing to give back",
                       size=size, image_end=check.image_end_offset, target=target)
            return plan
        note = ""
        if self.remote is not None:
            try:
                new_size = await self.remote(volume, target, False)
            except ReduceRefused as refusal:
                new_size, note = settle(volume, size, target, refusal,
                                        await self._size_now(volume))
                bound.warning("reduce applied although the SPM's answer said otherwise",
                              note=note)
            else:
                await self._size_now(volume)  # this host's view of the smaller LV
        else:
            new_size = (await self.backend.reduce(volume, target)).size
        given = max(0, size - new_size)
        self.reduces += 1
        self.given_back += given
        bound.info("volume reduced", size=size, new_size=new_size, given_back=given,
                   image_end=check.image_end_offset)
        return ReducePlan(str(volume), size, check.image_end_offset, target, new_size, given,
                          dry_run, note)

    async def _size_now(self, volume: VolumeRef) -> int:
        """This host's view of the volume, refreshed first (the SPM may have changed it);
        the unrefreshed view when the refresh fails."""
        try:
            return await self.backend.refresh(volume)
        except AutoextendError as exc:
            log.warning("refresh before reading the size failed", volume=str(volume),
                        error=str(exc))
            return await self.backend.size(volume)

    def _image_path(self, volume: VolumeRef, paths: list[str]) -> str:
        base = innermost(self.backend)
        return base.file_path(volume) if isinstance(base, FileBacked) else paths[0]

    async def _chunk_and_extent(self, volume: VolumeRef) -> tuple[int, int]:
        info = DriveInfo(vm="", drive="", node="", path="", capacity=0, allocation=0,
                         physical=0)
        pol = overrides.resolve(self.settings.policy, info, volume)
        return pol.chunk, await extent_of(self.backend, volume, pol.extent)


async def extent_of(backend: object, volume: VolumeRef, fallback: int) -> int:
    """The extent size of ``volume``'s VG as ``backend`` knows it (:class:`KnowsExtent`: the
    reserve guard's and the loop backend's fixed size, the lvm backend's VG metadata); else
    ``fallback`` (the policy's ``extent_mib``)."""
    if isinstance(backend, KnowsExtent):
        return await backend.vg_extent_size(volume.vg)
    return fallback


def held_volumes(backend: VolumeBackend, proc: str = "/proc",
                 sys_block: str = "/sys/block") -> set[VolumeRef]:
    """The pool volumes some process on this host has open through this host's own view
    (the holders scan of the in-use records, ``spm/inuse.py``; blocking: run it in a thread).

    Every fd in ``proc`` (this process's excepted) that names a block device or a file is
    mapped to a volume by ``backend.lookup`` (a ``/dev/dm-N`` by its ``/dev/mapper`` name)
    and kept when it is this host's device of that volume (``device_path``): in the lab,
    where several hosts share one machine, another host's loop device over the same file is
    that host's to publish. (A process holding the lab's volume *file* itself is not found:
    the lab's guests open loop devices; real LVM volumes have no file.)"""
    found: set[VolumeRef] = set()
    seen: dict[str, VolumeRef | None] = {}
    for _pid, fd_path in other_processes_fds(proc):
        try:
            target = os.readlink(fd_path)
        except OSError:
            continue
        if not target.startswith("/") or target.startswith(("/proc", "/sys")):
            continue
        if target not in seen:
            seen[target] = _own_volume(backend, target, sys_block)
        volume = seen[target]
        if volume is not None:
            found.add(volume)
    return found


def _own_volume(backend: VolumeBackend, target: str, sys_block: str) -> VolumeRef | None:
    path = target
    name = os.path.basename(target)
    if target == f"/dev/{name}" and name.startswith("dm-"):
        try:
            with open(os.path.join(sys_block, name, "dm", "name")) as f:
                path = "/dev/mapper/" + f.read().strip()
        except OSError:
            return None
    try:
        volume = backend.lookup(path)
        if volume is None:
            return None
        own = os.path.realpath(backend.device_path(volume))
    except (AutoextendError, OSError, ValueError):
        return None
    return volume if own == os.path.realpath(target) else None


def in_use_names(users: VolumesInUse, backend: VolumeBackend) -> Callable[[], Awaitable[
        list[str]]]:
    """The in-use publisher's source (``spm/inusepub.py``): the volumes of the monitor's
    drives (``users``), plus what the holders scan finds (:func:`held_volumes`)."""
    async def names() -> list[str]:
        volumes = {use.volume for use in users.volumes_in_use()}
        volumes |= await anyio.to_thread.run_sync(held_volumes, backend)
        return sorted(str(v) for v in volumes)
    return names
