"""A lease host for takeover tests and the benchmark: ``python -m tests.lease.takeover_worker``.

Prints lines on stdout (CLOCK_MONOTONIC seconds): ``JOINED t``, ``ACQ lver t``,
``RENEW t_start`` after every successful renewal while holding, ``REL t`` after a release.
``--hold S`` releases after S seconds (0 = hold forever); ``--release-on-stdin`` steps down
when a line arrives on stdin.
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio

from autoextend import logs
from autoextend.clock import MonotonicClock
from autoextend.directio import open_storage
from autoextend.lease.config import LeaseSettings
from autoextend.lease.service import LeaseService


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "json")
    storage = await open_storage(args.path, io_timeout=args.io_timeout)
    settings = LeaseSettings(
        host_id=args.host_id, host_name=f"bench{args.host_id}", io_timeout_s=args.io_timeout,
        watchdog_fire_timeout_s=args.watchdog, max_hosts=args.max_hosts,
        acquire_poll_s=args.poll,
    )
    lease = LeaseService(storage, settings, MonotonicClock())
    async with lease.joined():
        say("JOINED", f"{time.monotonic():.6f}")
        async with lease.spm() as term:
            say("ACQ", term.lver, f"{time.monotonic():.6f}")
            seen = lease.delta.last_renewal
            say("RENEW", f"{seen:.6f}")
            stop_at = time.monotonic() + args.hold if args.hold > 0 else float("inf")
            async with anyio.create_task_group() as tg:
                if args.release_on_stdin:
                    async def wait_stdin() -> None:
                        await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                        lease.step_down()
                    tg.start_soon(wait_stdin)
                while time.monotonic() < stop_at:
                    await anyio.sleep(args.io_timeout / 20)  # time is the subject: watch renewals
                    if lease.delta.last_renewal != seen:
                        seen = lease.delta.last_renewal
                        say("RENEW", f"{seen:.6f}")
                tg.cancel_scope.cancel()
        say("REL", f"{time.monotonic():.6f}")
        await anyio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", required=True)
    parser.add_argument("--host-id", type=int, required=True)
    parser.add_argument("--io-timeout", type=float, required=True)
    parser.add_argument("--watchdog", type=float, required=True)
    parser.add_argument("--poll", type=float, default=0.0)
    parser.add_argument("--max-hosts", type=int, default=16)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--release-on-stdin", action="store_true")
    anyio.run(main, parser.parse_args())
