"""Every Extender the conformance suite runs, each an async context manager entered in the
test body (the mailbox one runs an SPM mail server and a host mailbox in a task group, which
must not span a fixture's setup and teardown).

- ``memory``: the monitor's fake (:class:`~autoextend.monitor.memory.MemoryExtender`).
- ``local-memory`` / ``local-loop``: :class:`~autoextend.monitor.local.LocalExtender` over the
  in-memory volumes, and over the loop backend (real loop devices: ``slow``).
- ``mailbox``: :class:`~autoextend.spm.extender.MailboxExtender` through a real SPM mail
  server and host mailbox on in-memory sectors; the SPM writes the volumes, the host side
  (no authority) refreshes them.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest

from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.local import LocalExtender
from autoextend.monitor.memory import MemoryExtender, MemoryVolumes
from autoextend.monitor.protocols import Extender
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.extender import MailboxExtender
from autoextend.spm.host import HostMailbox
from autoextend.spm.server import SpmMailServer
from autoextend.volumes import LocalAuthority, VolumeBackend, VolumeRef
from tests.lvm.support import EXTENT, release_under, unique_name
from tests.spm.fakes import FAST, layout_for


@dataclass
class ExtenderSubject:
    kind: str
    extender: Extender
    vg: str
    create: Callable[[str, int], Awaitable[VolumeRef]]
    seen: VolumeBackend               # this host's view: what it sees after the extension
    limit: Callable[[str, int | None], Awaitable[None]]  # give the VG a capacity in bytes
    extent: int


def _memory(extent: int = EXTENT) -> tuple[MemoryVolumes, str, Callable[[str, int],
                                                                          Awaitable[VolumeRef]]]:
    volumes = MemoryVolumes(extent_size=extent)
    vg = unique_name()

    async def create(name: str, size: int) -> VolumeRef:
        ref = VolumeRef(vg, name)
        await volumes.create(ref, size)
        return ref

    return volumes, vg, create


@contextlib.asynccontextmanager
async def memory_subject() -> AsyncIterator[ExtenderSubject]:
    volumes, vg, create = _memory()
    yield ExtenderSubject("memory", MemoryExtender(volumes), vg, create, volumes,
                          volumes.set_vg_capacity, EXTENT)


@contextlib.asynccontextmanager
async def local_memory_subject() -> AsyncIterator[ExtenderSubject]:
    volumes, vg, create = _memory()
    yield ExtenderSubject("local-memory", LocalExtender(volumes), vg, create, volumes,
                          volumes.set_vg_capacity, EXTENT)


@contextlib.asynccontextmanager
async def local_loop_subject() -> AsyncIterator[ExtenderSubject]:
    root = tempfile.mkdtemp(prefix="autoextend-extcontract-", dir="/var/tmp")
    backend = LoopVolumeBackend(root, EXTENT, LocalAuthority())
    vg = unique_name()

    async def create(name: str, size: int) -> VolumeRef:
        ref = VolumeRef(vg, name)
        await backend.create(ref, size)
        return ref

    try:
        yield ExtenderSubject("local-loop", LocalExtender(backend), vg, create, backend,
                              backend.set_vg_capacity, EXTENT)
    finally:
        await release_under(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def mailbox_subject() -> AsyncIterator[ExtenderSubject]:
    volumes, vg, create = _memory()
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    server = SpmMailServer(storage, volumes, [vg], layout=layout, authority=LocalAuthority(),
                           settings=FAST)
    host = HostMailbox(storage, layout, 1, FAST)
    host_view = volumes.host_side()
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(host.run)
        yield ExtenderSubject("mailbox", MailboxExtender(host, host_view), vg, create,
                              host_view, volumes.set_vg_capacity, EXTENT)
        tg.cancel_scope.cancel()


SUBJECTS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[ExtenderSubject]]] = {
    "memory": memory_subject,
    "local-memory": local_memory_subject,
    "local-loop": local_loop_subject,
    "mailbox": mailbox_subject,
}


@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.slow) if kind == "local-loop"
                        else kind for kind in SUBJECTS])
def extender_subject(
    request: pytest.FixtureRequest,
) -> Callable[[], contextlib.AbstractAsyncContextManager[ExtenderSubject]]:
    """The factory of one subject: enter it in the test body (``async with``)."""
    return SUBJECTS[request.param]
