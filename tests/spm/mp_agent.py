"""A host or SPM process for the multi-process mailbox tests (run as a script).

    python mp_agent.py spm  META VOLROOT RECORD STATUS MAX_HOSTS
    python mp_agent.py host META HOST_ID MAX_HOSTS PLAN_JSON RESULT_JSON

The SPM serves with the ``loop`` volume backend wrapped in a recorder that appends one JSON
line per extend (volume, size, changed) to RECORD, and rewrites STATUS with its counters
every 50 ms. The host sends the requests of PLAN (a list of [vg, lv, size, concurrency
group]) with the given concurrency and writes every reply to RESULT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import anyio

from autoextend.directio import open_storage
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.spm.config import MailboxSettings
from autoextend.spm.host import HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.volumes import ExtendResult, LocalAuthority, VolumeRef

EXTENT = 1 << 20


def settings(max_hosts: int) -> MailboxSettings:
    return MailboxSettings(
        offset=0, max_hosts=max_hosts, poll_interval_s=0.005, reply_poll_interval_s=0.002,
        reply_poll_max_s=0.05, ring_retry_initial_s=0.2, ring_retry_max_s=0.5,
        full_scan_interval_s=2.0, request_timeout_s=60.0,
    )


class RecordingLoopBackend:
    """The loop backend, with every extension appended to a file (composition)."""

    def __init__(self, root: str, record: str) -> None:
        self.inner = LoopVolumeBackend(root, EXTENT, LocalAuthority())
        self._record = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        result = await self.inner.extend(volume, size)
        line = json.dumps({"volume": str(volume), "size": size, "changed": result.changed})
        os.write(self._record, (line + "\n").encode())
        return result

    def __getattr__(self, name: str) -> Any:  # everything else is the loop backend's
        return getattr(self.inner, name)


async def run_spm(meta: str, root: str, record: str, status: str, max_hosts: int) -> None:
    config = settings(max_hosts)
    storage = await open_storage(meta, 512, io_timeout=10.0)
    layout = MailboxLayout(0, storage.sector_size, max_hosts)
    backend = RecordingLoopBackend(root, record)
    server = SpmMailServer(storage, backend, ["vg0"], layout=layout,
                           authority=LocalAuthority(), settings=config, epoch=os.getpid())

    async def report() -> None:
        while True:
            tmp = status + ".tmp"
            with open(tmp, "w") as out:
                json.dump(dataclasses.asdict(server.counters), out)
            os.replace(tmp, status)
            await anyio.sleep(0.05)  # a periodic report for the parent (not a wait)

    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        tg.start_soon(report)


async def run_host(meta: str, host_id: int, max_hosts: int, plan_path: str,
                   result_path: str) -> None:
    config = settings(max_hosts)
    with open(plan_path) as f:
        plan: list[list[Any]] = json.load(f)
    storage = await open_storage(meta, 512, io_timeout=10.0)
    layout = MailboxLayout(0, storage.sector_size, max_hosts)
    mailbox = HostMailbox(storage, layout, host_id, config)
    results: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(mailbox.run)
        groups: dict[int, list[list[Any]]] = {}
        for item in plan:
            groups.setdefault(int(item[3]), []).append(item)
        for _, items in sorted(groups.items()):
            async with anyio.create_task_group() as batch:
                for vg, lv, size, _group in items:

                    async def one(vg: str = vg, lv: str = lv, size: int = size) -> None:
                        reply = await mailbox.request(VolumeRef(vg, lv), size)
                        results.append({"volume": f"{vg}/{lv}", "asked": size,
                                        "status": reply.status.name, "size": reply.size,
                                        "reason": reply.reason.name, "id": reply.request_id})

                    batch.start_soon(one)
        tg.cancel_scope.cancel()
    with open(result_path, "w") as out:
        json.dump({"results": results, "counters": dataclasses.asdict(mailbox.counters),
                   "generation": mailbox.generation}, out)


def main(argv: list[str]) -> None:
    if argv[0] == "spm":
        anyio.run(run_spm, argv[1], argv[2], argv[3], argv[4], int(argv[5]))
    else:
        anyio.run(run_host, argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5])


if __name__ == "__main__":
    main(sys.argv[1:])
