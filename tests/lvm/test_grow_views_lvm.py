"""GROW-PV waits for every live host's view of the grown PV (issue 27 item 2), on real lvm2
(activation off) with one loop device per "host" over each PV's backing file, as hosts
see one LUN through devices of their own.

The backing file grows and only some hosts rescan (``losetup -c`` on their own loop
device). Each host publishes its in-use record with its view of the PVs
(``lvm/devviews.py``, ``spm/inuse.py``); the SPM's executor refuses ``pvresize`` with one
line naming the first live host whose view is smaller, writes nothing, and resizes (one
commit) once that host rescanned. A host the lease sees dead does not count; a live host
that publishes no views (an older release) holds it back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from autoextend.clock import MonotonicClock
from autoextend.lvm import loopdev
from autoextend.lvm.devviews import DeviceViews
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig
from autoextend.lvm.reader import LvmReader
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.execute import Executor
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.wire import OP_GROW_PV, ReasonCode, Request, Status
from autoextend.volumes import LocalAuthority

from .support import EXTENT, MiB, Pool

pytestmark = pytest.mark.slow
LAYOUT = MailboxLayout(0, 512, 4)
GROWTH = 16 * MiB


@dataclass
class Hosts:
    vg: str
    storage: MemoryStorage
    devices: dict[int, list[str]]  # host -> its loop devices, one per PV (host 1: the pool's)
    publishers: dict[int, InUsePublisher]
    states: dict[int, tuple[str, int]]
    executor: Executor


async def nothing_open() -> list[str]:
    return []


@pytest.fixture
async def hosts(pool: Pool) -> AsyncIterator[Hosts]:
    """Host 1 (the SPM) uses the pool's devices; hosts 2 and 3 attach their own loop
    devices over the same files and see the PVs through them only."""
    storage = MemoryStorage(LAYOUT.end + 4096, 512)
    clock = MonotonicClock()
    devices: dict[int, list[str]] = {1: list(pool.devices)}
    # Hosts 2 and 3's devices are over the pool's files: the pool's teardown detaches them.
    for host in (2, 3):
        devices[host] = [await loopdev.attach(f) for f in pool.files]
    publishers = {}
    for host, devs in devices.items():
        reader = LvmReader(pool.runner, LvmCommandConfig(tuple(devs)))
        publishers[host] = InUsePublisher(
            storage, LAYOUT, host, nothing_open, lambda: 1, clock, period_s=0.2,
            devices=DeviceViews(reader, (pool.vg,), clock))
        await publishers[host].start()
    states = {h: ("live", 1) for h in devices}
    gate = InUseGate(storage, LAYOUT, lambda: states, clock, period_s=0.2, margin_s=0.2)
    backend = LvmVolumeBackend(pool.runner, pool.reader, pool.writer, (pool.vg,))
    executor = Executor(backend, LocalAuthority(), clock, hot_window_s=0.0,
                        max_concurrent=2, in_use=gate)
    yield Hosts(pool.vg, storage, devices, publishers, states, executor)


async def publish(hosts: Hosts) -> None:
    for publisher in hosts.publishers.values():
        assert await publisher.publish_once() is not None


async def seqno(pool: Pool) -> int:
    return (await pool.reader.vg(pool.vg)).seqno


async def grow(hosts: Hosts, request_id: int) -> tuple[Status, int, str]:
    verdict = await hosts.executor.execute(2, 1, Request(request_id, hosts.vg, "", 1,
                                                         OP_GROW_PV))
    assert verdict is not None
    if verdict.status is not Status.OK:
        assert verdict.reason is ReasonCode.VOLUME_BUSY
    return verdict.status, verdict.size, verdict.text


async def test_pvresize_waits_for_every_live_host_to_see_the_larger_device(
        pool: Pool, hosts: Hosts) -> None:
    os.truncate(pool.files[0], os.path.getsize(pool.files[0]) + GROWTH)
    await loopdev.set_capacity(hosts.devices[1][0])  # the SPM's own view
    await loopdev.set_capacity(hosts.devices[3][0])  # host 3 rescanned, host 2 not
    await publish(hosts)
    record = hosts.publishers[2].last
    assert record is not None and len(record.devices) == 3
    s0 = await seqno(pool)
    status, _, text = await grow(hosts, 1)
    assert status is Status.FAILED, text
    # The advice first (the reply's text holds 100 bytes), then the figures as they fit.
    assert text.startswith(f"host 2: rescan PV {hosts.devices[1][0]} there, then run pool"
                           " grow again"), text
    assert "\n" not in text
    assert await seqno(pool) == s0
    # Host 2 is dead per the lease: it does not count.
    hosts.states[2] = ("dead", 1)
    status, size, text = await grow(hosts, 2)
    assert (status, size) == (Status.OK, GROWTH), text
    assert await seqno(pool) == s0 + 1
    pvs = {pv.name: pv for pv in await pool.reader.pvs(pool.vg)}
    assert pvs[pool.devices[0]].extent_count == pvs[pool.devices[1]].extent_count + (
        GROWTH // EXTENT)
    # The next grow: host 2 back alive, PV 1 grown and rescanned on hosts 1 and 3 only.
    hosts.states[2] = ("live", 1)
    os.truncate(pool.files[1], os.path.getsize(pool.files[1]) + GROWTH)
    for host in (1, 3):
        await loopdev.set_capacity(hosts.devices[host][1])
    await publish(hosts)
    status, _, text = await grow(hosts, 3)
    assert status is Status.FAILED and text.startswith("host 2: rescan PV"), text
    assert await seqno(pool) == s0 + 1
    # Host 2 rescans; its next publish shows it, and the grow goes through (once).
    for index in (0, 1):
        await loopdev.set_capacity(hosts.devices[2][index])
    await publish(hosts)
    status, size, text = await grow(hosts, 4)
    assert (status, size) == (Status.OK, GROWTH), text
    assert await seqno(pool) == s0 + 2
    status, size, text = await grow(hosts, 5)
    assert (status, size, text) == (Status.OK, 0, "no PV of the VG has grown")
    assert await seqno(pool) == s0 + 2


async def test_a_live_host_without_views_holds_the_grow_back(pool: Pool, hosts: Hosts) -> None:
    hosts.publishers[3] = InUsePublisher(  # an older release: no device views
        hosts.storage, LAYOUT, 3, nothing_open, lambda: 1, MonotonicClock(), period_s=0.2)
    await hosts.publishers[3].start()
    os.truncate(pool.files[2], os.path.getsize(pool.files[2]) + GROWTH)
    for host in (1, 2, 3):
        await loopdev.set_capacity(hosts.devices[host][2])
    await publish(hosts)
    s0 = await seqno(pool)
    status, _, text = await grow(hosts, 1)
    assert status is Status.FAILED, text
    assert text.startswith(f"host 3 does not list PV {pool.devices[2]}"), text
    assert await seqno(pool) == s0
