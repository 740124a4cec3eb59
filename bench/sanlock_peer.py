"""sanlock itself as a side-by-side peer in the lease benchmark (see bench/lease_bench.py).

Each sanlock "host" is one daemon in its own mount namespace with a private ``/run``, started
by the lab (autoextend/lab/sanlockd.py: the setrlimit shim, ``-w 0 -l 0 -h 0``, shut down or
SIGKILLed on exit). Clients run in its namespace: ``nsenter -t PID -m -- sanlock client ...``;
the sanlock engine's figures use libsanlock in this process through
``SANLOCK_RUN_DIR=/proc/PID/root/run/sanlock``.

Everything started here is stopped in ``finally`` blocks: holders are killed, daemons are
shut down (``client shutdown -f 1``) or SIGKILLed, and every process is waited for.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from autoextend.lab.sanlockd import (
    SanlockDaemon,
    build_shim,
    kill_and_wait,
    missing_tools,
    sanlock_daemon,
)
from bench.iocount import IoCall, io_window, trace_io

__all__ = ["build_shim", "missing_tools"]
ALIGN = 1 << 20  # sanlock's lockspace and resource size for 512-byte sectors


@dataclass
class SanlockHost:
    name: str
    host_id: int
    daemon: SanlockDaemon

    @property
    def process(self) -> Process:
        return self.daemon.process

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def command(self, *args: str) -> list[str]:
        return self.daemon.command(*args)

    async def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return await self.daemon.client(*args, check=check)


@asynccontextmanager
async def sanlock_host(
    shim: Path, name: str, host_id: int, log: Path
) -> AsyncIterator[SanlockHost]:
    async with sanlock_daemon(shim, name, log) as daemon:
        yield SanlockHost(name, host_id, daemon)


@dataclass
class Cluster:
    path: Path
    lockspace: str   # LS:0:PATH:0 (host id 0 in the string, filled per host)
    resource: str    # LS:SPM:PATH:ALIGN
    io_timeout: int

    def lockspace_for(self, host: SanlockHost) -> str:
        return self.lockspace.replace(":0:", f":{host.host_id}:", 1)


async def format_cluster(tmp: Path, io_timeout: int) -> Cluster:
    """A written (not sparse) file under /var/tmp: lockspace at 0, the SPM resource at 1 MiB."""
    path = tmp / "sanlock.img"
    await anyio.Path(path).write_bytes(bytes(2 * ALIGN))
    cluster = Cluster(path, f"LS:0:{path}:0", f"LS:SPM:{path}:{ALIGN}", io_timeout)
    await anyio.run_process(
        ["sanlock", "direct", "init", "-s", cluster.lockspace, "-o", str(io_timeout)]
    )
    await anyio.run_process(["sanlock", "direct", "init", "-r", cluster.resource])
    return cluster


async def join(cluster: Cluster, *hosts: SanlockHost) -> dict[str, float]:
    """add_lockspace on every host at once; seconds each took."""
    took: dict[str, float] = {}

    async def one(host: SanlockHost) -> None:
        start = time.monotonic()
        await host.client("add_lockspace", "-s", cluster.lockspace_for(host),
                          "-o", str(cluster.io_timeout))
        took[host.name] = round(time.monotonic() - start, 3)

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(one, host)
    return took


@asynccontextmanager
async def holder(host: SanlockHost, cluster: Cluster) -> AsyncIterator[Process]:
    """A registered process on ``host`` that acquired the SPM resource (``client command``
    execs ``sleep`` with the registration; its pid is the one to acquire/release for)."""
    process = await anyio.open_process(
        host.command("command", "-r", cluster.resource, "-c", "/bin/sleep", "100000"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with anyio.fail_after(30):
            while cluster.resource not in await inquire(host, process.pid):
                if process.returncode is not None:
                    raise RuntimeError(f"sanlock holder on {host.name} exited")
                await anyio.sleep(0.05)
        yield process
    finally:
        await kill_and_wait(process)


async def inquire(host: SanlockHost, pid: int) -> str:
    result = await host.client("inquire", "-p", str(pid), check=False)
    return result.stdout.decode(errors="replace")


async def delta_timestamp(cluster: Cluster, host_id: int) -> int:
    """The host's delta lease timestamp on disk (its CLOCK_MONOTONIC seconds)."""
    lockspace = cluster.lockspace.replace(":0:", f":{host_id}:", 1)
    result = await anyio.run_process(["sanlock", "direct", "read_leader", "-s", lockspace])
    for line in result.stdout.decode().splitlines():
        key, _, value = line.partition(" ")
        if key == "timestamp":
            return int(value)
    raise RuntimeError("read_leader printed no timestamp")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3)}


class FreeAcquire:
    """Release and re-acquire the free SPM resource for a registered holder through the CLI.
    The CLI's own cost (process start, nsenter, socket round trip) is measured with
    ``inquire`` (no disk I/O) after each acquire and subtracted from the median."""

    def __init__(self, host: SanlockHost, cluster: Cluster, holder_pid: int) -> None:
        self.host = host
        self.cluster = cluster
        self.pid = str(holder_pid)
        self.acquire: list[float] = []
        self.baseline: list[float] = []

    async def round(self) -> None:
        await self.host.client("release", "-r", self.cluster.resource, "-p", self.pid)
        start = time.monotonic()
        await self.host.client("acquire", "-r", self.cluster.resource, "-p", self.pid)
        self.acquire.append(time.monotonic() - start)
        start = time.monotonic()
        await self.host.client("inquire", "-p", self.pid)
        self.baseline.append(time.monotonic() - start)

    def summary(self) -> dict[str, Any]:
        raw, base = percentiles(self.acquire), percentiles(self.baseline)
        return {"rounds": len(self.acquire), "cli_acquire": raw, "cli_baseline_inquire": base,
                "net_p50_ms": round(raw["p50_ms"] - base["p50_ms"], 3)}


async def measure_takeover(a: SanlockHost, b: SanlockHost, cluster: Cluster,
                           timeout: float) -> dict[str, Any]:
    """Host A holds the resource; its daemon is SIGKILLed (no watchdog: -w 0). Host B retries
    the acquire every 0.5 s (sanlock fails fast with IDLIVE while A's lease looks alive)
    until it gets it. Returns the time from A's last renewal (its on-disk timestamp, whole
    seconds) and from the kill."""
    async with holder(a, cluster):
        await anyio.sleep(2.5 * cluster.io_timeout)  # B has seen A renew
        a.process.kill()
        killed = time.monotonic()
        await a.process.wait()
    last_renewal = await delta_timestamp(cluster, a.host_id)
    tries = 0
    with anyio.fail_after(timeout):
        while True:
            tries += 1
            result = await b.client("command", "-r", cluster.resource, "-c", "/bin/true",
                                    check=False)
            if result.returncode == 0:
                acquired = time.monotonic()
                break
            await anyio.sleep(0.5)
    return {"from_last_renewal_s": round(acquired - last_renewal, 3),
            "from_last_renewal_note": "A's on-disk timestamp has 1 s resolution: +0..1 s",
            "from_kill_s": round(acquired - killed, 3), "tries": tries}


async def measure_idle_io(a: SanlockHost, b: SanlockHost, cluster: Cluster, tmp: Path,
                          window_s: float) -> dict[str, Any]:
    """Host A's daemon holds the SPM resource, host B's is joined and idle."""
    async with holder(a, cluster):
        await anyio.sleep(1.0)
        windows: dict[str, dict[str, Any]] = {}

        async def one(name: str, pid: int) -> None:
            out = tmp / f"strace-sanlock-{name}.txt"
            windows[name] = await io_window(pid, out, window_s, (0, ALIGN))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "holder", a.pid)
            tg.start_soon(one, "idle_host", b.pid)
    return windows


async def measure_cycle_io(a: SanlockHost, cluster: Cluster, tmp: Path,
                           cycles: int = 10) -> dict[str, Any]:
    """The daemon's I/O per release + acquire cycle of the free resource (strace: the iocbs
    at the resource's offset; the lockspace renewals before it are left out)."""
    async with holder(a, cluster) as proc:
        pid = str(proc.pid)
        traced: dict[str, list[IoCall] | str] = {}

        async def trace() -> None:
            out = tmp / "strace-sanlock-cycles.txt"
            traced["calls"] = await trace_io(a.pid, 2.0 + 0.1 * cycles, out)

        async with anyio.create_task_group() as tg:
            tg.start_soon(trace)
            await anyio.sleep(1.0)  # strace attached
            for _ in range(cycles):
                await a.client("release", "-r", cluster.resource, "-p", pid)
                await a.client("acquire", "-r", cluster.resource, "-p", pid)
    calls = traced["calls"]
    if isinstance(calls, str):
        return {"not_measured": calls}
    resource = [c for c in calls if c.offset >= ALIGN]
    return {"cycles": cycles, "io_per_cycle": round(len(resource) / cycles, 2),
            "read_bytes_per_cycle": round(sum(c.length for c in resource if c.op == "read")
                                          / cycles),
            "io_calls": dict(Counter(str(c) for c in resource))}
