"""The floor: the least an extender must do per extension, for the local path to be held against.

:class:`FloorExtender` serves one guest over its QMP socket and does nothing but: on
``BLOCK_WRITE_THRESHOLD`` grow the backing file by one chunk (``ftruncate``), make the loop
device see it (the ``LOOP_SET_CAPACITY`` ioctl, what ``losetup -c`` does) and re-arm the
threshold (``block-set-write-threshold``). No drive query, no policy, no thread hop, no logs.
If the guest pauses on ENOSPC anyway, it grows and sends ``cont``.

Latency runs from the event read off the socket to the re-arm's reply, as autoextend's
``total`` runs from the event reaching the VM's task to its re-arm's reply.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus
from qemu.qmp import QMPClient

LOOP_SET_CAPACITY = 0x4C07  # <linux/loop.h>


@dataclass
class FloorExtender:
    """One guest's minimal extender. ``node``: the host_device node the threshold is on."""

    client: QMPClient
    backing_file: str
    device: str
    node: str
    chunk: int
    watermark: int
    phases: list[dict[str, float]] = field(default_factory=list)
    pauses: int = 0
    resume_latencies: list[float] = field(default_factory=list)
    #: STOP -> RESUME by QEMU's own event timestamps (seconds).
    qemu_pauses: list[float] = field(default_factory=list)

    def _size(self) -> int:
        fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)

    def _grow(self) -> int:
        size = os.stat(self.backing_file).st_size + self.chunk
        os.truncate(self.backing_file, size)
        return size

    def _refresh(self) -> None:
        fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_SET_CAPACITY)
        finally:
            os.close(fd)

    async def _arm(self, size: int) -> None:
        await self.client.execute("block-set-write-threshold",
                                  {"node-name": self.node,
                                   "write-threshold": max(1, size - self.watermark)})

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Arm, then serve events until cancelled."""
        with self.client.listener() as events:
            await self._arm(self._size())
            task_status.started()
            paused_at: float | None = None
            stopped: float | None = None
            async for event in events:
                name = event.get("event")
                data: Any = event.get("data") or {}
                ts: Any = event.get("timestamp") or {}
                when = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
                if name == "STOP":
                    stopped = when
                elif name == "RESUME" and stopped is not None:
                    self.qemu_pauses.append(when - stopped)
                    stopped = None
                if name == "BLOCK_WRITE_THRESHOLD" and data.get("node-name") == self.node:
                    t0 = time.perf_counter()
                    size = self._grow()
                    t1 = time.perf_counter()
                    self._refresh()
                    t2 = time.perf_counter()
                    await self._arm(size)
                    t3 = time.perf_counter()
                    self.phases.append({"extend": t1 - t0, "refresh": t2 - t1,
                                        "rearm": t3 - t2, "total": t3 - t0})
                elif name == "BLOCK_IO_ERROR" and data.get("nospace") and paused_at is None:
                    paused_at = time.perf_counter()
                    self.pauses += 1
                    size = self._grow()
                    self._refresh()
                    await self._arm(size)
                    await self.client.execute("cont")
                    self.resume_latencies.append(time.perf_counter() - paused_at)
                elif name == "RESUME":
                    paused_at = None
