"""One writer for the pool: CREATE, REMOVE and GROW-PV on the writer (issue 27, item 2).

The SPM (mailbox mode, ops ``wire.OP_CREATE``, ``OP_REMOVE``, ``OP_GROW_PV``, served by
``execute.py`` like an extend: the term checked before every lvm2 command, the VG's lock
held) and the one host (local mode, the local writer) run these same functions, so no other
process needs to run lvm2 writes on the pool.

**Idempotency.** A request may be served twice: a reply write that failed, or an SPM killed
after the command and before its reply (the request stays in the host's box and the next
SPM serves it). Each op is written so that a second serving finds it done and answers OK
without a second metadata commit:

- CREATE tags the LV ``autoextend.request=<host>.<generation>.<request id>`` in the same
  ``lvcreate`` (one metadata commit: the LV exists with its tags or not at all, so an SPM
  killed in the middle leaves no half-made LV). A second serving finds an LV of that name
  carrying that tag: OK with its size. An LV of that name *without* the tag is someone
  else's: REJECTED ``VOLUME_EXISTS``, never a second LV, never a change to it.
- REMOVE: an LV that is not there is answered OK ("not there"). The CLI says so, so a typo
  is visible, and nothing was written.
- GROW-PV: ``pvresize`` runs only for a PV whose device holds more extents than the PV has;
  a second serving finds none.

**A snapshot LV** (CREATE with a parent, ``volume create VG/LV --parent BASE``): the LV for
a qcow2 overlay whose backing file is ``VG/BASE``. The parent must be an LV of the same VG
(else REJECTED ``NO_SUCH_VOLUME``, nothing written) and the capacity no smaller than the
parent's ``autoextend.vsize`` tag (an overlay is never smaller than its backing file); the LV
gets ``autoextend.parent=BASE`` with its other tags in the same one ``lvcreate``. The
overlay itself (``qemu-img create -b``) is the management's, on the host that activates it.

**The journal.** A change (an LV created or removed, PVs resized) is noted through ``note``
(the SPM's journal, ``journal.py``; None in local mode) before the verdict goes back, like an
extend. A create found done by its own request is noted late (FOUND: an SPM that died
between its ``lvcreate`` and its record) only when the caller's journal lacks it.

**REMOVE is gated like REDUCE**: the in-use gate's two looks (``inusegate.py``: refused
while any live host lists the volume, or its record cannot say), the young-term and hot
rules of ``reducing.py``. An LV that is gone needs no gate (it is checked first).

**GROW-PV waits for every host's view.** ``pvresize`` runs only once every live host sees
the larger device (``devicegate.py``: each host publishes the size of its view of each PV
in its in-use record; the SPM refuses, one line naming the first host whose view is
smaller or unknown). Local mode has one host: its writer's view is the only one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

from autoextend.lvm.loop_pool import loop_pool_writer
from autoextend.lvm.vsize import BadVsizeTag, vsize_from_tags
from autoextend.spm.devicegate import PvView
from autoextend.spm.journal import Op
from autoextend.spm.reducing import Verdict
from autoextend.spm.wire import ReasonCode, Status
from autoextend.volumes import VolumeBackend, VolumeRef, innermost

OWNER_TAG_PREFIX = "autoextend.owner="
PARENT_TAG_PREFIX = "autoextend.parent="
REQUEST_TAG_PREFIX = "autoextend.request="
QCOW_OVERHEAD = (11, 10)  # vdsm's QCOW_OVERHEAD_FACTOR, 1.1, as a fraction
SECTOR = 512


class CreateRefused(ValueError):
    """A create that cannot be asked as given (a usage error: one line)."""


def initial_size(capacity: int, initial: int | None, chunk: int) -> int:
    """The size of a new thin (qcow2) volume's LV, vdsm's rule: one chunk when no initial
    size is given (here at most the capacity plus 10 %: a small disk gets no more than it
    can ever use); else the initial size plus 10 % for qcow2's metadata, rounded up to a
    sector. An initial size above the capacity is refused (CreateRefused), as vdsm does.
    The writer rounds the result up to whole extents."""
    if capacity <= 0:
        raise CreateRefused("the capacity must be positive")
    if initial is None:
        return min(chunk, _with_overhead(capacity))
    if initial <= 0:
        raise CreateRefused("the size must be positive")
    if initial > capacity:
        raise CreateRefused(f"the size ({initial} B) is larger than the capacity"
                            f" ({capacity} B)")
    return _with_overhead(initial)


def _with_overhead(size: int) -> int:
    num, den = QCOW_OVERHEAD
    grown = -(-size * num // den)
    return -(-grown // SECTOR) * SECTOR


def request_tag(host: int, generation: int, request_id: int) -> str:
    return f"{REQUEST_TAG_PREFIX}{host}.{generation}.{request_id}"


def owner_tag(owner: str) -> str:
    return f"{OWNER_TAG_PREFIX}{owner}"


def parent_tag(parent: str) -> str:
    return f"{PARENT_TAG_PREFIX}{parent}"


class Note(Protocol):
    """Journal one change (``JournalWriter.note``'s shape, bound to the request)."""

    async def __call__(self, op: Op, volume: VolumeRef, old_size: int, new_size: int, *,
                      found: bool = False) -> object: ...


class FoundLv(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def tags(self) -> tuple[str, ...]: ...


class GrownPv(PvView, Protocol):
    """A PV the writer can grow: the device gate's view of it, and its extent size."""

    @property
    def extent_size(self) -> int: ...


class PoolWriter(Protocol):
    """What these ops need of the writer (``lvm/writer.py: LvmWriter``)."""

    async def find_lv(self, volume: VolumeRef) -> FoundLv | None: ...

    async def create_lv(self, volume: VolumeRef, size: int, tags: Sequence[str] = (),
                        activate: bool = False, *,
                        virtual_size: int | None = None) -> FoundLv: ...

    async def remove_lv(self, volume: VolumeRef) -> None: ...

    async def pv_growth(self, vg: str) -> Sequence[GrownPv]: ...

    async def grow_pvs(self, vg: str) -> Sequence[GrownPv]: ...


def pool_writer(backend: VolumeBackend) -> PoolWriter | None:
    """The writer of the pool ops behind ``backend``: the lvm backend's ``LvmWriter``, the
    loop stand-in's ``LoopPoolWriter``; None for a backend that has none."""
    loop = loop_pool_writer(backend)
    if loop is not None:
        return loop
    writer = getattr(innermost(backend), "writer", None)
    return cast("PoolWriter | None", writer)


# Why the PVs that grew must not be resized yet (another host's view), or None.
GrowRefusal = Callable[[Sequence[GrownPv]], Awaitable[str | None]]


async def create(writer: PoolWriter, volume: VolumeRef, size: int, vsize: int, *,
                 owner: str, request: str, parent: str = "",
                 note: Note | None = None) -> Verdict:
    """Create ``volume`` (``size`` bytes, rounded up to extents; inactive, metadata only)
    tagged with its virtual size, owner and request, and ``parent`` for a snapshot LV;
    idempotent (module docs)."""
    found = await writer.find_lv(volume)
    if found is not None:
        if request in found.tags:
            if note is not None:
                await note(Op.CREATE, volume, 0, found.size, found=True)
            return Verdict(Status.OK, found.size, text="already created by this request")
        made_by = [t[len(REQUEST_TAG_PREFIX):] for t in found.tags
                   if t.startswith(REQUEST_TAG_PREFIX)]
        by = f" (made by request {made_by[0]})" if made_by else " (not made through autoextend)"
        return Verdict(Status.REJECTED, found.size, ReasonCode.VOLUME_EXISTS,
                       f"{volume} exists already{by}")
    tags = [owner_tag(owner), request]
    if parent:
        refusal = await _parent_refusal(writer, VolumeRef(volume.vg, parent), vsize)
        if refusal is not None:
            return refusal
        tags.append(parent_tag(parent))
    made = await writer.create_lv(volume, size, tags, virtual_size=vsize)
    if note is not None:
        await note(Op.CREATE, volume, 0, made.size)
    return Verdict(Status.OK, made.size,
                   text=f"created on parent {parent}" if parent else "created")


async def _parent_refusal(writer: PoolWriter, parent: VolumeRef, vsize: int) -> Verdict | None:
    """Why a snapshot LV cannot be made on ``parent`` (missing, or larger than the overlay's
    capacity), or None."""
    base = await writer.find_lv(parent)
    if base is None:
        return Verdict(Status.REJECTED, reason=ReasonCode.NO_SUCH_VOLUME,
                       text=f"parent {parent} does not exist")
    try:
        base_vsize = vsize_from_tags(base.tags)
    except BadVsizeTag:
        base_vsize = None
    if base_vsize is not None and vsize < base_vsize:
        return Verdict(Status.REJECTED, reason=ReasonCode.BAD_SIZE,
                       text=f"capacity {vsize} B is smaller than parent {parent}'s"
                            f" ({base_vsize} B)")
    return None


async def remove(writer: PoolWriter, volume: VolumeRef,
                 refusal: Callable[[], Awaitable[str | None]],
                 note: Note | None = None) -> Verdict:
    """Remove ``volume`` unless ``refusal()`` says why it must not go (in use somewhere;
    asked only when the LV exists); an LV that is not there is OK ("not there", nothing
    written)."""
    found = await writer.find_lv(volume)
    if found is None:
        return Verdict(Status.OK, 0, text="not there (already removed?)")
    why = await refusal()
    if why is not None:
        return Verdict(Status.REJECTED, reason=ReasonCode.VOLUME_BUSY, text=why)
    await writer.remove_lv(volume)
    if note is not None:
        await note(Op.REMOVE, volume, found.size, 0)
    return Verdict(Status.OK, 0, text="removed")


async def grow(writer: PoolWriter, vg: str, note: Note | None = None,
               refusal: GrowRefusal | None = None) -> Verdict:
    """``pvresize`` the PVs of ``vg`` whose device grew, unless ``refusal`` says another
    host does not see them grown yet (FAILED, VOLUME_BUSY: nothing written); OK with the
    bytes added. The journal record (``vg/``, no LV) has the resized PVs' bytes before
    and after."""
    if refusal is not None:
        pvs = await writer.pv_growth(vg)
        why = await refusal([pv for pv in pvs if pv.room > pv.extent_count])
        if why is not None:
            return Verdict(Status.FAILED, reason=ReasonCode.VOLUME_BUSY, text=why)
    grown = await writer.grow_pvs(vg)
    if not grown:
        return Verdict(Status.OK, 0, text="no PV of the VG has grown")
    before = sum(pv.extent_count * pv.extent_size for pv in grown)
    after = sum(pv.room * pv.extent_size for pv in grown)
    if note is not None:
        await note(Op.GROW_PV, VolumeRef(vg, ""), before, after)
    return Verdict(Status.OK, after - before, text=f"{len(grown)} PV(s) resized")
