"""The mailbox on a real loop device with 512 B and 4 KiB logical sectors (O_DIRECT).

The storage is opened through ``autoextend.directio.open_storage`` with sector size 0, so
the mailbox layout follows the device's own logical sector size (BLKSSZGET).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from autoextend.directio import open_storage
from autoextend.spm.host import HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.spm.wire import Kind, Reply, Status, decode_ring, decode_sector
from autoextend.volumes import LocalAuthority

from .fakes import FAST, RecordingBackend
from .pool import VG, MiB, vol

pytestmark = pytest.mark.slow  # loop devices (make unit runs none)

AREA_BYTES = 4 * MiB


@pytest.fixture(params=[512, 4096], ids=["512B", "4KiB"])
def loop_device(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A loop device over a zeroed file, with the given logical sector size."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    sector_size: int = request.param
    root = Path(tempfile.mkdtemp(prefix="autoextend-spm-loop-", dir="/var/tmp"))
    device = ""
    try:
        backing = root / "meta"
        with open(backing, "wb") as f:
            f.truncate(AREA_BYTES)
        device = subprocess.run(
            ["losetup", "--sector-size", str(sector_size), "-f", "--show", str(backing)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        yield device, sector_size
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


async def test_mailbox_on_a_loop_device(loop_device: tuple[str, int]) -> None:
    device, sector_size = loop_device
    storage = await open_storage(device, 0)
    try:
        assert storage.sector_size == sector_size
        layout = MailboxLayout(0, storage.sector_size, FAST.max_hosts)
        backend = RecordingBackend({vol(n): 100 * MiB for n in range(3 * 40)})
        server = SpmMailServer(storage, backend, [VG], layout=layout,
                               authority=LocalAuthority(), settings=FAST)
        hosts = [HostMailbox(storage, layout, h, FAST) for h in (1, 2, FAST.max_hosts)]
        replies: dict[tuple[int, int], Reply] = {}
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            for host in hosts:
                await tg.start(host.run)
            async with anyio.create_task_group() as burst:
                for i, host in enumerate(hosts):
                    for n in range(40):  # past the ring sector's head slots (4, or 33)

                        async def ask(host: HostMailbox = host, lv: int = i * 40 + n) -> None:
                            replies[(host.host_id, lv)] = await host.request(vol(lv),
                                                                             (150 + lv) * MiB)

                        burst.start_soon(ask)
            tg.cancel_scope.cancel()
        assert len(replies) == 120
        assert all(r.status is Status.OK and r.size == (150 + lv) * MiB
                   for (_, lv), r in replies.items())
        assert server.counters.received == 120 and server.counters.corrupt_sectors == 0
        # What is on the device: each host's ring sector (its count: at least the rings
        # counted; a ring cut short by the cancellation may still have landed) and its
        # request box, written in its generation.
        for host in hosts:
            raw = await storage.read(layout.ring_offset(host.host_id), sector_size)
            ring = decode_ring(raw, host.host_id)
            assert ring.host_id == host.host_id and ring.generation == host.generation
            assert ring.count >= host.counters.rings >= 2
            box = await storage.read(layout.request_offset(host.host_id),
                                     layout.request_box_bytes)
            first = decode_sector(box[:sector_size], Kind.REQUEST, 1, host.host_id,
                                  len(layout.request_sector_slots(1)))
            assert first.generation == host.generation
    finally:
        await storage.close()
