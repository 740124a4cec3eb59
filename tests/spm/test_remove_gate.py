"""A REMOVE is gated like a REDUCE (issue 27 item 2 with item 1's in-use records): the real
host mailbox, the real SPM mail server and real in-use publishers on in-memory storage, and
the SPM's backend real lvm2 (activation off, loop PVs). A volume a live host lists is not
removed, and the refusal names the host; a stale record refuses; one listed nowhere goes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import pytest

from autoextend.clock import MonotonicClock
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.host import HostMailbox
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.server import SpmMailServer
from autoextend.spm.wire import OP_REMOVE, Reply, Status
from autoextend.volumes import LocalAuthority, VolumeRef
from tests.lvm.support import EXTENT, Pool, pool

from .fakes import FAST, layout_for

__all__ = ["pool"]
pytestmark = pytest.mark.slow
NO_HOT = FAST.model_copy(update={"hot_window_s": 0.0})  # only the in-use check refuses
PERIOD = 0.05  # the publishers' period (the shipped one is 2 s)


class Rig:
    """Host 1 asks and is the SPM; host 2 may list the volume."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        layout = layout_for(FAST)
        self.storage = MemoryStorage(layout.end, 512)
        self.states: dict[int, tuple[str, int]] = {1: ("live", 11), 2: ("live", 22)}
        self.open: dict[int, list[str]] = {1: [], 2: []}
        clock = MonotonicClock()
        gate = InUseGate(self.storage, layout, lambda: self.states, clock, period_s=PERIOD,
                         margin_s=0.2)
        self.publishers = {
            h: InUsePublisher(self.storage, layout, h, self._source(h),
                              partial(self._generation, h), clock, period_s=PERIOD)
            for h in (1, 2)}
        backend = LvmVolumeBackend(pool.runner, pool.reader, pool.writer, (pool.vg,))
        self.server = SpmMailServer(self.storage, backend, [pool.vg], layout=layout,
                                    authority=LocalAuthority(), settings=NO_HOT,
                                    in_use=gate)
        self.host = HostMailbox(self.storage, layout, 1, FAST)

    def _generation(self, host: int) -> int:
        return self.states[host][1]

    def _source(self, host: int) -> Callable[[], Awaitable[list[str]]]:
        async def names() -> list[str]:
            return list(self.open[host])
        return names

    async def remove(self, volume: VolumeRef, *, stop: tuple[int, ...] = ()) -> Reply:
        async with anyio.create_task_group() as tg:
            for h, pub in self.publishers.items():
                if h not in stop:
                    await tg.start(pub.run)
                else:
                    await pub.start()
                    await pub.publish_once()  # one record, then silent: stale
            await tg.start(self.host.run)
            await tg.start(self.server.run)
            reply = await self.host.request(volume, 1, op=OP_REMOVE)
            tg.cancel_scope.cancel()
        return reply


async def names(pool: Pool) -> list[str]:
    return [lv.name for lv in await pool.reader.lvs(pool.vg)]


async def test_a_volume_listed_by_another_live_host_is_not_removed(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "disk")
    await pool.writer.create_lv(vol, EXTENT)
    seqno = (await pool.reader.vg(pool.vg)).seqno
    rig = Rig(pool)
    rig.open[2].append(str(vol))
    reply = await rig.remove(vol)
    assert reply.status is Status.REJECTED and "in use on host 2" in reply.text
    assert await names(pool) == ["disk"]
    assert (await pool.reader.vg(pool.vg)).seqno == seqno


async def test_a_stale_record_refuses_a_remove(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "disk")
    await pool.writer.create_lv(vol, EXTENT)
    rig = Rig(pool)
    reply = await rig.remove(vol, stop=(2,))
    assert reply.status is Status.REJECTED and "host 2" in reply.text, reply
    assert await names(pool) == ["disk"]


async def test_a_volume_listed_nowhere_is_removed_once(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "disk")
    await pool.writer.create_lv(vol, EXTENT)
    seqno = (await pool.reader.vg(pool.vg)).seqno
    rig = Rig(pool)
    rig.open[2].append(f"{pool.vg}/other")
    reply = await rig.remove(vol)
    assert reply.status is Status.OK and reply.text == "removed", reply
    assert await names(pool) == []
    assert (await pool.reader.vg(pool.vg)).seqno == seqno + 1
