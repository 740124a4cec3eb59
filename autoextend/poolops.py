"""The control commands ``volume_create``, ``volume_remove`` and ``pool_grow`` (issue 27,
item 2): every change to a pool VG goes through the one writer.

Mailbox mode: a CREATE, REMOVE or GROW-PV request to the SPM (``spm/volumeops.py`` holds
what the SPM does and its idempotency); local mode: the same functions on the local writer.
A remove is first checked on this host (a VM here uses it, a process here has it open: one
clear line at once); in mailbox mode the SPM then asks every host (the in-use gate); in
local mode with a shared area this host reads the other hosts' in-use records itself
(``sharedgate.py``, the SPM's rule and code), right before the local writer removes.

Each handler returns ``{"volume" or "vg", "done": bool, "size": bytes, "text": ...}`` or
raises AutoextendError with one line (the control socket sends it back as the error).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any, Protocol

import anyio

from autoextend.capacity.qcheck import open_by
from autoextend.capacity.reduce import SharedRefusal, VolumesInUse, parse_volume
from autoextend.errors import AutoextendError
from autoextend.names import is_valid_name
from autoextend.spm import volumeops
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.reducing import Verdict
from autoextend.spm.wire import OP_CREATE, OP_GROW_PV, OP_REMOVE, Reply, Status
from autoextend.volumes import VolumeBackend, VolumeRef


class PoolOpError(AutoextendError):
    """Refused or failed: one line for the operator."""


class Mailbox(Protocol):
    async def request(self, volume: VolumeRef, size: int, *, op: int = ...,
                      vsize: int = ..., parent: str = ...) -> Reply: ...


class Pool(Protocol):
    @property
    def mailbox(self) -> Mailbox | None: ...


def _int(request: dict[str, Any], key: str, *, required: bool = True) -> int | None:
    value = request.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{key} must be a positive number of bytes")
    return value


def _parent(volume: VolumeRef, value: object) -> str:
    """A snapshot's parent: an LV name, or ``vg/lv`` in the volume's own VG ("" for none)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError("parent must be an LV name")
    vg, sep, lv = value.rpartition("/")
    if sep and vg != volume.vg:
        raise ValueError(f"parent {value[:80]!r} is not in VG {volume.vg}: a snapshot LV"
                         " lives in its parent's VG")
    if not is_valid_name(lv) or lv == volume.lv:
        raise ValueError(f"malformed parent LV name {lv[:40]!r}")
    return lv


class PoolOps:
    """The three control commands of one service."""

    def __init__(self, backend: VolumeBackend, pool_vgs: Collection[str], chunk: int,
                 cluster: Pool | None, shared: SharedRefusal | None = None) -> None:
        """``shared``: local mode's look at the other hosts' in-use records when the pool
        has a shared area (``sharedgate.py``; asked only for a volume that exists)."""
        self.backend = backend
        self.pool_vgs = pool_vgs
        self.chunk = chunk
        self.cluster = cluster
        self.shared = shared

    def _in_pool(self, vg: str) -> None:
        if self.pool_vgs and vg not in self.pool_vgs:
            raise PoolOpError(f"VG {vg} is not in the pool ({', '.join(self.pool_vgs)})")

    async def volume_create(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"volume": "vg/lv", "capacity": bytes, "size": bytes or null, "parent": "lv"
        or "vg/lv" or null}`` (a parent: a snapshot LV for a qcow2 overlay on it)."""
        volume = parse_volume(str(request.get("volume", "")))
        parent = _parent(volume, request.get("parent"))
        capacity = _int(request, "capacity")
        assert capacity is not None
        try:
            size = volumeops.initial_size(capacity, _int(request, "size", required=False),
                                          self.chunk)
        except volumeops.CreateRefused as exc:
            raise ValueError(str(exc)) from None
        self._in_pool(volume.vg)
        if self.cluster is not None:
            verdict = await self._ask(volume, size, OP_CREATE, capacity, parent)
        else:
            verdict = await volumeops.create(
                self._writer(), volume, size, capacity, owner="local",
                request=f"{volumeops.REQUEST_TAG_PREFIX}local.{uuid.uuid4().hex[:16]}",
                parent=parent)
        return self._answer("volume", str(volume), "create", verdict)

    async def volume_remove(self, request: dict[str, Any],
                            users: VolumesInUse) -> dict[str, Any]:
        """``{"volume": "vg/lv"}``: refused while in use here (or, mailbox mode, anywhere)."""
        volume = parse_volume(str(request.get("volume", "")))
        self._in_pool(volume.vg)
        local_refusal = await self._used_here(volume, users)
        if self.cluster is not None:
            if local_refusal is not None:
                raise PoolOpError(f"{volume}: not removed: {local_refusal}")
            verdict = await self._ask(volume, 1, OP_REMOVE, 0)
        else:
            async def refusal() -> str | None:
                if local_refusal is not None or self.shared is None:
                    return local_refusal
                return await self.shared(str(volume), False)  # another host's use

            verdict = await volumeops.remove(self._writer(), volume, refusal)
        return self._answer("volume", str(volume), "remove", verdict)

    async def pool_grow(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"vgs": [...]}`` (empty: every VG of the pool): pvresize what grew."""
        asked = request.get("vgs") or list(self.pool_vgs)
        if not isinstance(asked, list) or not all(isinstance(v, str) for v in asked):
            raise ValueError("vgs must be a list of VG names")
        if not asked:
            raise PoolOpError("no VG given and [lvm] vgs is empty")
        out = []
        for vg in asked:
            if not is_valid_name(vg):
                raise ValueError(f"malformed VG name {vg[:40]!r}")
            self._in_pool(vg)
            verdict = (await self._ask(VolumeRef(vg, ""), 1, OP_GROW_PV, 0)
                       if self.cluster is not None
                       else await volumeops.grow(self._writer(), vg))
            out.append(self._answer("vg", vg, "grow", verdict))
        return {"vgs": out}

    async def _used_here(self, volume: VolumeRef, users: VolumesInUse) -> str | None:
        for use in users.volumes_in_use():
            if use.volume == volume:
                return f"VM {use.vm} uses it (drive {use.drive})"
        try:
            paths = list(self.backend.holders_paths(volume))
        except AutoextendError:
            return None  # no such volume here: the writer answers
        holders = await anyio.to_thread.run_sync(open_by, paths)
        if holders:
            who = ", ".join(f"pid {pid} ({comm})" for pid, comm in holders[:3])
            return f"it is open on this host by {who}"
        return None

    def _writer(self) -> volumeops.PoolWriter:
        writer = volumeops.pool_writer(self.backend)
        if writer is None:
            raise PoolOpError("this host's backend has no LVM writer ([service] extender"
                              " = \"lvm\" with the lvm backend)")
        return writer

    async def _ask(self, volume: VolumeRef, size: int, op: int, vsize: int,
                   parent: str = "") -> Verdict:
        mailbox = None if self.cluster is None else self.cluster.mailbox
        if mailbox is None:
            raise PoolOpError("this host has not joined the pool yet; retry")
        try:
            reply = await mailbox.request(volume, size, op=op, vsize=vsize, parent=parent)
        except (MailboxTimeout, MailboxClosed) as exc:
            raise PoolOpError(f"no answer from the SPM ({exc}); the op may still be done:"
                              " run the same command again to know") from exc
        return Verdict(reply.status, reply.size, reply.reason, reply.text)

    @staticmethod
    def _answer(key: str, name: str, what: str, verdict: Verdict) -> dict[str, Any]:
        if verdict.status is not Status.OK:
            label = "refused" if verdict.status is Status.REJECTED else "failed"
            raise PoolOpError(f"{name}: {what} {label}: {verdict.text or verdict.reason.name}")
        return {key: name, "done": True, "size": verdict.size, "text": verdict.text}

