"""Neutral core types of the volume pool, shared by every layer.

The volume boundary (:class:`VolumeRef`, :class:`ExtendResult`, :class:`VolumeBackend`) is what
the monitor, the extenders and the SPM need of volumes. A volume is an LV ``vg/lv``. Backends
(in ``autoextend.lvm``): ``lvm`` (production) and ``loop`` (sparse files on loop devices, for
machines without device-mapper). Both pass ``tests/conformance/test_volume_backend.py``, as do
the in-memory fake and the reserve wrapper.

Who may write VG metadata: the :class:`SpmAuthority` a writer checks before every command. In a
shared-storage pool only the SPM writes metadata; the lease helper's SPM term object implements
``check()``. :class:`LocalAuthority` always allows and is meant **only for single-host mode**
(one host owns the VG, no SPM election), the lab and tests.

This module imports no backend package, so every layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from autoextend.errors import NotSpmError, VolumeError


class VolumeNotFound(VolumeError):
    """The VG or LV (or the loop backend's file) does not exist."""

    def __init__(self, volume: str, detail: str = "") -> None:
        self.volume = volume
        self.detail = detail
        super().__init__(f"volume {volume} not found" + (f": {detail}" if detail else ""))


class VolumeExists(VolumeError):
    """A volume to be created exists already."""

    def __init__(self, volume: str, detail: str = "") -> None:
        self.volume = volume
        super().__init__(f"volume {volume} exists already" + (f": {detail}" if detail else ""))


class VolumeSpaceError(VolumeError):
    """The volume cannot grow: not enough free space in its pool."""


@dataclass(frozen=True, order=True)
class VolumeRef:
    vg: str
    lv: str

    def __str__(self) -> str:
        return f"{self.vg}/{self.lv}"


@dataclass(frozen=True)
class ExtendResult:
    """``size`` is the volume's size in metadata afterwards; ``changed`` is False when the
    volume was already at least as large as asked (idempotent no-op, or another extend got
    there first). ``previous``: its size before, where the backend knows it (the SPM's
    journal records it)."""

    size: int
    changed: bool
    previous: int | None = None


@dataclass(frozen=True)
class VgFigures:
    """One VG as read from its backend: ``size`` and ``free`` in bytes.

    The metadata figures are None where the backend has no VG metadata (the loop and
    in-memory backends): ``mda_size`` and ``mda_free`` are lvm2's ``vg_mda_size`` and
    ``vg_mda_free`` (bytes; free is at most about half the size, see ``lvm/report.py``);
    ``segments`` is the LV segments of the VG in all and ``max_segments`` the most any one
    LV has (``lvs -o seg_count``)."""

    vg: str
    size: int
    free: int
    mda_size: int | None = None
    mda_free: int | None = None
    segments: int | None = None
    max_segments: int | None = None


class ReportsVgFigures(Protocol):
    """The pool's VG figures: what the capacity watcher reads. The pool backends (lvm, loop,
    the reserve guard passing on to what it wraps, the in-memory one) implement it; so does
    the capacity part's published source (the SPM's record, in mailbox mode)."""

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        """Figures of those of ``vgs`` that have them (a loop or in-memory VG without a
        capacity is left out), and so is a VG that does not exist. Raises AutoextendError
        (or OSError) when the look fails as a whole.
        Reads only: a host without the authority to write answers the same."""
        ...


@dataclass(frozen=True)
class ListedVolume:
    """One volume of a VG as a :class:`ListsVolumes` sees it: ``ident`` changes when the
    volume may have changed; ``tag_vsize`` the virtual size its ``autoextend.vsize`` tag
    gives (None: no tag, or ``tag_problem`` says why it is unusable); ``path`` the device or
    file ``qemu-img info`` would open."""

    lv: str
    ident: tuple[object, ...]
    tag_vsize: int | None
    tag_problem: str
    path: str


@dataclass(frozen=True)
class VgVolumes:
    """Every volume of one VG, and the VG's size in bytes."""

    vg: str
    size: int
    volumes: tuple[ListedVolume, ...]


class ListsVolumes(Protocol):
    """Every volume of a pool VG (running or not): the SPM's committed-space scan
    (``capacity/committed.py``). Implementations: ``lvm/listing.py`` (lvm, loop)."""

    async def vg_volumes(self, vg: str) -> VgVolumes | None:
        """The VG's volumes and size; None when the VG is not there (or, loop, has no
        capacity set). Reads only. Raises AutoextendError or OSError when the look fails."""
        ...


class VolumeBackend(Protocol):
    """Raises :class:`~autoextend.errors.VolumeError` subclasses on failure."""

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Grow to at least ``size`` (rounded up to the extent size). Never shrinks."""
        ...

    async def refresh(self, volume: VolumeRef) -> int:
        """Make this host see the current size; returns the size this host now sees."""
        ...

    async def size(self, volume: VolumeRef) -> int:
        """The size this host sees now."""
        ...

    def lookup(self, path: str) -> VolumeRef | None:
        """Map a device path to its volume, or None when it is not one of ours."""
        ...

    def device_path(self, volume: VolumeRef) -> str: ...

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Shrink to ``size`` rounded up to the extent size; never grows (``autoextend volume
        reduce``). A backend that cannot (a test's fake) raises VolumeError saying so."""
        ...

    async def metadata_size(self, volume: VolumeRef) -> int:
        """The volume's size in the pool's metadata (what the SPM last wrote: ``lvs
        --readonly``'s ``lv_size``; the loop stand-in's file size), as opposed to
        :meth:`size`, what this host's view shows. ``autoextend volume prepare`` refreshes
        until the view is at least this size; the SPM judges a reduce by it. A backend with
        one view (the fakes) answers its size. Raises VolumeNotFound."""
        ...

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        """Every path through which the volume may be open on this machine (device, file,
        loop devices): ``autoextend volume reduce`` refuses a volume that is open."""
        ...


@runtime_checkable
class ExtendsAndRefreshes(Protocol):
    """Optional: a backend that grows a volume and refreshes this host's view in one step
    (the loop backend: one worker-thread hop). Never offered by a wrapper that checks
    extensions (``lvm/reserve.py``), so the check cannot be skipped through it."""

    async def extend_and_refresh(
        self, volume: VolumeRef, size: int
    ) -> tuple[ExtendResult, int, dict[str, float]]:
        """The result, the size this host now sees, and the phases (seconds)."""
        ...


@runtime_checkable
class FileBacked(Protocol):
    """Optional: a backend whose volumes are files (the loop backend)."""

    def file_path(self, volume: VolumeRef) -> str: ...


@runtime_checkable
class KnowsExtent(Protocol):
    """Optional: a backend that knows its VGs' extent size: a fixed one (the loop backend,
    the reserve guard's configured size, the in-memory backend) or read from the VG's
    metadata (the lvm backend). One capability, so that no caller walks the wrappers."""

    async def vg_extent_size(self, vg: str) -> int: ...


@runtime_checkable
class Wraps(Protocol):
    """A backend that wraps another (the VG reserve guard). Look through ``inner`` (see
    :func:`innermost`) only to learn what the wrapped backend *is* (its figures, its files);
    every change to a volume goes through the wrapper, which may check it."""

    @property
    def inner(self) -> VolumeBackend: ...


def innermost(backend: object) -> object:
    """The backend under every :class:`Wraps` layer of ``backend`` (itself if none)."""
    while isinstance(backend, Wraps):
        backend = backend.inner
    return backend


class SpmAuthority(Protocol):
    def check(self) -> None:
        """Return if this host may write metadata now; raise NotSpmError otherwise."""
        ...


class LocalAuthority:
    """Always allows. Single-host mode only: never use it where other hosts share the VG."""

    def check(self) -> None:
        return None


class NoAuthority:
    """Never allows: what a host that is not SPM holds."""

    def __init__(self, reason: str = "this host is not the SPM") -> None:
        self.reason = reason

    def check(self) -> None:
        raise NotSpmError(self.reason)
