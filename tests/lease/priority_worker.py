"""A lease host with an SPM priority, for the real-process elections test:
``python -m tests.lease.priority_worker --path AREA --host-id N --priority P --hosts K``.

Prints on stdout: ``JOINED``, ``READY`` once its renewals have read every one of the K hosts'
records held, then (after a ``go`` line on stdin) ``ACQ host_id lver`` at each term it wins;
it holds each term ``--hold`` seconds and steps down (the usual hold-off), forever.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from autoextend import logs
from autoextend.clock import MonotonicClock
from autoextend.directio import open_storage
from autoextend.lease.config import LeaseSettings
from autoextend.lease.priority import parse_priority
from autoextend.lease.service import LeaseService


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "json")
    storage = await open_storage(args.path, io_timeout=args.io_timeout)
    priority = parse_priority(args.priority if args.priority == "never" else int(args.priority))
    settings = LeaseSettings(
        host_id=args.host_id, host_name=f"prio{args.host_id}", io_timeout_s=args.io_timeout,
        watchdog_fire_timeout_s=args.watchdog, max_hosts=16, acquire_poll_s=args.poll,
        spm_priority=priority,
    )
    lease = LeaseService(storage, settings, MonotonicClock())
    async with lease.joined():
        say("JOINED", args.host_id)
        while not all(
            (rec := lease.monitor.record(h)) is not None and not rec.free
            for h in range(1, args.hosts + 1)
        ):
            await anyio.sleep(args.io_timeout)  # polling the monitor the renewals feed
        say("READY", args.host_id)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        while True:
            async with lease.spm() as term:
                say("ACQ", args.host_id, term.lver)
                await anyio.sleep(args.hold)  # hold the role: time is the subject
                lease.step_down()
                await anyio.sleep_forever()  # cancelled by the step-down


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", required=True)
    parser.add_argument("--host-id", type=int, required=True)
    parser.add_argument("--priority", required=True)
    parser.add_argument("--hosts", type=int, required=True)
    # T = 0.5 s: a loaded machine's stalls of a second do not cost a host its lease
    parser.add_argument("--io-timeout", type=float, default=0.5)
    parser.add_argument("--watchdog", type=float, default=1.0)
    # a poll of 1 s: the 5 host looks within 1 s, a 0 host yields 2 s (a margin of 1 s)
    parser.add_argument("--poll", type=float, default=1.0)
    # longer than the hold-off (4 polls): the host that stepped down before contends again
    parser.add_argument("--hold", type=float, default=5.0)
    anyio.run(main, parser.parse_args())
