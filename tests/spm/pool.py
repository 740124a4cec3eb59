"""The mailbox test pool: one in-memory metadata area, its SPM mail server and host mailboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from autoextend.clock import ManualClock
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.config import MailboxSettings
from autoextend.spm.host import HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.volumes import VolumeRef

from .fakes import FAST, Authority, RecordingBackend, layout_for

MiB = 1 << 20
VG = "vg0"


def vol(n: int) -> VolumeRef:
    return VolumeRef(VG, f"lv{n}")


class Pool:
    def __init__(self, sector_size: int = 512, settings: MailboxSettings = FAST) -> None:
        self.settings = settings
        self.layout: MailboxLayout = layout_for(settings, sector_size)
        self.storage = MemoryStorage(self.layout.end, sector_size)
        self.backend = RecordingBackend({vol(n): 100 * MiB for n in range(80)})
        self.authority = Authority()

    def server(self, **kw: object) -> SpmMailServer:
        return SpmMailServer(self.storage, self.backend, [VG], layout=self.layout,
                             authority=self.authority, settings=self.settings, **kw)  # type: ignore[arg-type]

    def host(self, host_id: int = 1) -> HostMailbox:
        return HostMailbox(self.storage, self.layout, host_id, self.settings)


@asynccontextmanager
async def serving(pool: Pool, *host_ids: int) -> AsyncIterator[tuple[SpmMailServer,
                                                                     list[HostMailbox]]]:
    server = pool.server()
    hosts = [pool.host(h) for h in host_ids]
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        for host in hosts:
            await tg.start(host.run)
        yield server, hosts
        tg.cancel_scope.cancel()


async def tick(clock: ManualClock, seconds: float, step: float = 0.025) -> None:
    """Advance manual time in poll-sized steps, letting every task run after each step."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()


NO_SAFETY_NET = FAST.model_copy(update={
    "full_scan_interval_s": 86400.0,  # no slow box scan
    "ring_retry_initial_s": 600.0,  # no re-rings
    "ring_retry_max_s": 600.0,
})
