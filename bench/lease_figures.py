"""Our side of the lease benchmark (bench/lease_bench.py): free acquire, I/O per cycle and
per renewal, idle I/O, and takeover after SIGKILL or release, at T = 1 s on files under
/var/tmp (O_DIRECT|O_DSYNC). Processes are ``tests.lease.takeover_worker``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from autoextend.clock import MonotonicClock
from autoextend.directio import DirectStorage, open_storage
from autoextend.lab.leasefile import format_file
from autoextend.lease.config import LeaseSettings
from autoextend.lease.service import LeaseService
from autoextend.lease.timeouts import lease_timeouts
from bench.iocount import io_window
from bench.sanlock_peer import percentiles

REPO = Path(__file__).resolve().parents[1]
T = 1.0            # io_timeout of every figure
W_OURS = 2.0       # our test setting
W_SANLOCK = 60.0   # sanlock 3.8.5: fixed watchdog_fire_timeout
IDLE_WINDOW_S = 10.0


def _settings(host_id: int, w: float) -> LeaseSettings:
    return LeaseSettings(host_id=host_id, host_name=f"bench{host_id}", io_timeout_s=T,
                         watchdog_fire_timeout_s=w, max_hosts=16)


def _io(storage: DirectStorage) -> tuple[int, int]:
    return storage.stats.reads, storage.stats.writes


class FreeAcquire:
    """Our free acquire, in-process: one ``spm()`` entry per round (then released)."""

    def __init__(self, lease: LeaseService, storage: DirectStorage) -> None:
        self.lease = lease
        self.storage = storage
        self.times: list[float] = []
        self.ios: list[int] = []

    async def round(self) -> None:
        r0, w0 = _io(self.storage)
        start = time.monotonic()
        async with self.lease.spm():
            self.times.append(time.monotonic() - start)
            r1, w1 = _io(self.storage)
            self.ios.append((r1 - r0) + (w1 - w0))

    def summary(self) -> dict[str, Any]:
        return {"rounds": len(self.times), **percentiles(self.times),
                "io_per_acquire_max": max(self.ios),
                "io_per_acquire_median": statistics.median(self.ios)}


@asynccontextmanager
async def free_acquirer(area: Path) -> AsyncIterator[FreeAcquire]:
    storage = await open_storage(str(area), io_timeout=T)
    try:
        lease = LeaseService(storage, _settings(1, W_OURS), MonotonicClock())
        async with lease.joined():
            yield FreeAcquire(lease, storage)
    finally:
        await storage.close()


class LeaseWorker:
    """A ``tests.lease.takeover_worker`` process (holds the SPM lease once it gets it)."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)
        self.renewals: list[float] = []

    async def expect(self, word: str) -> list[str]:
        while True:
            parts = (await self._out.receive_until(b"\n", 4096)).decode().split()
            if parts and parts[0] == "RENEW":
                self.renewals.append(float(parts[1]))
            if parts and parts[0] == word:
                return parts

    async def record(self) -> None:
        await self.expect("never")

    async def drain(self) -> None:
        """Read what the (dead) process printed, up to EOF."""
        try:
            await self.record()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            pass


async def takeover(area: Path, w: float, *, kill: bool, timeout: float) -> float:
    """Host 1 takes the lease, host 2 waits and watches; then host 1 is SIGKILLed (``kill``)
    or steps down. Seconds from host 1's last renewal start (or the step-down request) to
    host 2 holding the lease. Async (cancellable) twin of tests/lease/takeover.py."""
    a = await start_worker(area, 1, w, "--release-on-stdin")
    b: LeaseWorker | None = None
    try:
        with anyio.fail_after(timeout):
            await a.expect("ACQ")
            await a.expect("RENEW")
            b = await start_worker(area, 2, w)
            await b.expect("JOINED")
            await anyio.sleep(3 * T)  # b polls the lease and watches a's renewals
            if kill:
                a.process.kill()
                await a.process.wait()
                await a.drain()  # renewals a printed before it died
                last = max(a.renewals)
            else:
                assert a.process.stdin is not None
                last = time.monotonic()
                await a.process.stdin.send(b"release\n")
            acquired = float((await b.expect("ACQ"))[2])
        return acquired - last
    finally:
        await stop(a.process)
        if b is not None:
            await stop(b.process)


async def start_worker(area: Path, host_id: int, w: float = W_OURS, *extra: str) -> LeaseWorker:
    process = await anyio.open_process(
        [sys.executable, "-m", "tests.lease.takeover_worker", "--path", str(area),
         "--host-id", str(host_id), "--io-timeout", str(T), "--watchdog", str(w), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )
    return LeaseWorker(process)


async def stop(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        with anyio.move_on_after(10):
            await process.wait()


async def ours_idle_io(tmp: Path) -> dict[str, Any]:
    """Holder (host 1) and waiting contender (host 2), as processes, T=1 s, 16 host slots."""
    area = tmp / "ours-idle.img"
    await format_file(area, 16)
    holder = await start_worker(area, 1)
    waiter: LeaseWorker | None = None
    renewal_read = (0, 16 * 512)  # the delta area: 16 slots of 512 B at the area start
    try:
        with anyio.fail_after(30):
            await holder.expect("ACQ")
            waiter = await start_worker(area, 2)
            await waiter.expect("JOINED")
        await anyio.sleep(1.0)
        windows: dict[str, dict[str, Any]] = {}

        async def one(name: str, pid: int) -> None:
            out = tmp / f"strace-ours-{name}.txt"
            windows[name] = await io_window(pid, out, IDLE_WINDOW_S, renewal_read)

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.record)  # keep its stdout drained
            async with anyio.create_task_group() as inner:
                inner.start_soon(one, "holder", holder.process.pid)
                inner.start_soon(one, "waiter", waiter.process.pid)
            tg.cancel_scope.cancel()
        return windows
    finally:
        await stop(holder.process)
        if waiter is not None:
            await stop(waiter.process)


async def ours_takeovers(tmp: Path, out: dict[str, Any]) -> None:
    """W=2: two SIGKILL samples and a clean release; run while the W=60 pair runs."""
    samples = []
    for index in range(2):
        area = tmp / f"ours-takeover-{index}.img"
        await format_file(area, 16)
        samples.append(round(await takeover(area, W_OURS, kill=True, timeout=120), 3))
    to = lease_timeouts(T, W_OURS)
    out["takeover_after_sigkill_w2"] = {
        "io_timeout_s": T, "watchdog_fire_timeout_s": W_OURS, "measured_s": samples,
        "bound_min_s": to.takeover_min, "bound_max_fast_s": to.takeover_max_fast,
        "bound_max_worst_s": to.takeover_max_worst,
    }
    area = tmp / "ours-release.img"
    await format_file(area, 16)
    release = await takeover(area, W_OURS, kill=False, timeout=60)
    out["takeover_after_release_s"] = round(release, 4)


async def ours_takeover_w60(tmp: Path, out: dict[str, Any]) -> None:
    area = tmp / "ours-takeover-w60.img"
    await format_file(area, 16)
    took = await takeover(area, W_SANLOCK, kill=True, timeout=150)
    to = lease_timeouts(T, W_SANLOCK)
    out["takeover_after_sigkill_w60"] = {
        "io_timeout_s": T, "watchdog_fire_timeout_s": W_SANLOCK,
        "measured_s": [round(took, 3)], "bound_min_s": to.takeover_min,
        "bound_max_fast_s": to.takeover_max_fast,
    }


async def ours_cycle_io(area: Path, cycles: int = 10) -> dict[str, Any]:
    """I/O calls of one acquire + release cycle of a free lease, and the host id join time."""
    storage = await open_storage(str(area), io_timeout=T)
    lease = LeaseService(storage, _settings(1, W_OURS), MonotonicClock())
    start = time.monotonic()
    async with lease.joined():
        joined = time.monotonic() - start
        r0, w0 = _io(storage)
        bytes0 = storage.stats.read_bytes
        renewals0 = lease.stats.renewals
        for _ in range(cycles):
            async with lease.spm():
                pass
        r1, w1 = _io(storage)
        renewals = lease.stats.renewals - renewals0
        read_bytes = storage.stats.read_bytes - bytes0 - renewals * lease.layout.delta_length
    await storage.close()
    return {"join_s": round(joined, 3), "cycles": cycles,
            "io_per_cycle": round((r1 - r0 + w1 - w0 - 2 * renewals) / cycles, 2),
            "read_bytes_per_cycle": round(read_bytes / cycles)}
