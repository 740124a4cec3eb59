"""One torture "host": joins, contends for the SPM lease forever, writes a devcount-style check
sector while holding it. Run as ``python -m tests.lease.torture_worker ARGS`` by torture.py.

Check sector (at CHECK_OFFSET): "host lver count" as text. The holder writes its record, waits
a moment, reads it back: another writer in between is a violation (printed and logged). Every
write is also logged as ``W lver host t_check t_done`` (CLOCK_MONOTONIC) for the offline check.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import anyio

from autoextend import logs
from autoextend.clock import MonotonicClock
from autoextend.directio import FaultPlan, FaultyStorage, open_storage
from autoextend.lease.config import LeaseSettings
from autoextend.lease.service import LeaseService
from autoextend.lease.watchdog import DeadlineFileWatchdog

CHECK_OFFSET = 6 << 20


def emit(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "json")
    clock = MonotonicClock()
    real = await open_storage(args.path, io_timeout=args.io_timeout)
    check = await open_storage(args.path, io_timeout=10.0)
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
    ss = check.sector_size
    async with lease.joined():
        while True:
            async with lease.spm() as term:
                emit(log_fd, f"A {term.lver} {args.host_id} {time.monotonic():.6f}")
                for count in range(rng.randint(1, 2)):
                    t_check = time.monotonic()
                    term.check()
                    mine = f"{args.host_id} {term.lver} {count}".encode().ljust(ss, b"\0")
                    await check.write(CHECK_OFFSET, mine)
                    emit(log_fd, f"W {term.lver} {args.host_id} {t_check:.6f} {time.monotonic():.6f}")
                    await anyio.sleep(rng.uniform(0, 0.002))
                    back = await check.read(CHECK_OFFSET, ss)
                    if back != mine:
                        other = back.rstrip(b"\0").decode(errors="replace")
                        emit(log_fd, f"V {term.lver} {args.host_id} {time.monotonic():.6f} {other}")
                        print(f"VIOLATION host {args.host_id} lver {term.lver}: saw {other}",
                              file=sys.stderr, flush=True)
            await anyio.sleep(rng.uniform(0, args.poll))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name, kind in [("--path", str), ("--log", str), ("--deadlines", str),
                       ("--host-id", int), ("--seed", int), ("--max-hosts", int),
                       ("--io-timeout", float), ("--watchdog", float), ("--poll", float)]:
        parser.add_argument(name, type=kind, required=True)
    parser.add_argument("--faults", action="store_true")
    anyio.run(main, parser.parse_args())
