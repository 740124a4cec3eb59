"""One torture "host": joins, contends for the SPM lease forever, writes a devcount-style check
sector while holding it. Forked by torture_spawner.py (``run(argv)``), or run alone as
``python -m tests.lease.torture_worker ARGS``.

Check sector (at CHECK_OFFSET): "host lver count" as text. The holder writes its record, waits
a moment, reads it back: another writer in between is a violation (printed and logged). Every
write is also logged as ``W lver host t_check t_done`` (CLOCK_MONOTONIC) for the offline check.

The lease itself goes through the production path (DirectStorage, O_DIRECT|O_DSYNC, behind
FaultyStorage). The check sector is an oracle, not lease state: it is written with O_DIRECT
but without O_DSYNC. O_DIRECT already makes each write visible to every other process's
O_DIRECT read once it returns, which is all the overlap check needs; durability across a
power loss is not what it checks. The flush that O_DSYNC adds made each check write cost
0.15-0.9 ms here instead of 0.05-0.08 ms (more under load), once or twice per term.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import sys
import time

import anyio

from autoextend import logs
from autoextend.clock import MonotonicClock
from autoextend.directio import open_storage
from autoextend.errors import NotSpmError
from autoextend.lease.config import LeaseSettings
from autoextend.lease.errors import LeaseError
from autoextend.lease.service import LeaseService
from autoextend.lease.watchdog import DeadlineFileWatchdog
from autoextend.sectorfakes import FaultPlan, FaultyStorage
from autoextend.sectors import StorageError

CHECK_OFFSET = 6 << 20
CHECK_SIZE = 4096  # one page: a whole sector at 512 B and at 4 KiB


def emit(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


class CheckSector:
    """The devcount sector: O_DIRECT without O_DSYNC (visibility, not durability)."""

    def __init__(self, path: str, size: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        self._size = size
        self._out = mmap.mmap(-1, size)
        self._in = mmap.mmap(-1, size)

    def _write(self, data: bytes) -> None:
        self._out[:] = data.ljust(self._size, b"\0")
        if os.pwritev(self._fd, [self._out], CHECK_OFFSET) != self._size:
            raise OSError("short check-sector write")

    def _read(self) -> bytes:
        if os.preadv(self._fd, [self._in], CHECK_OFFSET) != self._size:
            raise OSError("short check-sector read")
        return bytes(self._in).rstrip(b"\0")

    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._write, data)

    async def read(self) -> bytes:
        return await anyio.to_thread.run_sync(self._read)


async def hold_terms(lease: LeaseService, check: CheckSector, host_id: int, log_fd: int,
                     rng: random.Random, pause: float) -> None:
    """Take the SPM lease again and again; while holding it, write and verify the check."""
    while True:
        try:
            async with lease.spm() as term:
                emit(log_fd, f"A {term.lver} {host_id} {time.monotonic():.6f}")
                for count in range(rng.randint(1, 2)):
                    t_check = time.monotonic()
                    term.check()
                    mine = f"{host_id} {term.lver} {count}".encode()
                    await check.write(mine)
                    emit(log_fd, f"W {term.lver} {host_id} {t_check:.6f} {time.monotonic():.6f}")
                    await anyio.sleep(rng.uniform(0, 0.002))  # time is the subject: jitter
                    back = await check.read()
                    if back != mine:
                        other = back.decode(errors="replace")
                        emit(log_fd, f"V {term.lver} {host_id} {time.monotonic():.6f} {other}")
                        print(f"VIOLATION host {host_id} lver {term.lver}: saw {other}",
                              file=sys.stderr, flush=True)
        except NotSpmError:
            pass  # fenced before a check write: the term is over, as it should be
        await anyio.sleep(rng.uniform(0, pause))  # let the others contend too


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "json")
    clock = MonotonicClock()
    # The open gets a generous timeout: a freshly forked worker starts its first I/O thread
    # then, which can take longer than T on a loaded machine. Lease I/O then uses T.
    real = await open_storage(args.path, io_timeout=10.0)
    real.io_timeout = args.io_timeout
    check = CheckSector(args.path, max(CHECK_SIZE, real.sector_size))
    seed = args.seed
    plan = FaultPlan(
        seed=seed, delay_prob=0.01, max_delay_s=0.9 * args.io_timeout, timeout_prob=0.001,
        late_write_max_s=args.io_timeout * 4, torn_prob=0.001, garbage_prob=0.002,
        read_error_prob=0.002,
    ) if args.faults else FaultPlan(seed=seed)
    storage = FaultyStorage(real, plan, clock, args.io_timeout)
    settings = LeaseSettings(
        host_id=args.host_id, host_name=f"torture{args.host_id}", io_timeout_s=args.io_timeout,
        watchdog_fire_timeout_s=args.watchdog, max_hosts=args.max_hosts,
        acquire_poll_s=args.poll,
    )
    watchdog = DeadlineFileWatchdog(args.deadlines, args.host_id)
    lease = LeaseService(storage, settings, clock, watchdog=watchdog, rng=random.Random(seed))
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(seed + 1)
    while True:
        try:
            async with lease.joined():
                await hold_terms(lease, check, args.host_id, log_fd, rng,
                                 args.pause if args.pause >= 0 else args.poll)
        except (LeaseError, StorageError) as err:
            # Joining failed (an I/O timeout on a loaded machine, a racing claim): retry, as
            # the service would, instead of dying and costing a restart.
            print(f"join failed: {err}", file=sys.stderr, flush=True)
            await anyio.sleep(args.io_timeout)  # time is the subject: a rejoin delay


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torture_worker")
    for name, kind in [("--path", str), ("--log", str), ("--deadlines", str),
                       ("--host-id", int), ("--seed", int), ("--max-hosts", int),
                       ("--io-timeout", float), ("--watchdog", float), ("--poll", float)]:
        parser.add_argument(name, type=kind, required=True)
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--pause", type=float, default=-1.0,
                        help="random pause after each term, 0..PAUSE s (default: --poll)")
    return parser.parse_args(argv)


def run(argv: list[str]) -> None:
    anyio.run(main, parse(argv))


if __name__ == "__main__":
    run(sys.argv[1:])
