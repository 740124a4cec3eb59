"""Helpers of the issue 27 lab tests (a plain module, not a test module): the CLI of one
lab host, its status, and restarting a host in a PID namespace of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import anyio

from autoextend.lab import proc
from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import Pool, PoolGuest
from autoextend.lab.waiting import until


async def cli(p: Pool, host_id: int, *args: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "autoextend", "--config", str(p.hosts[host_id].config),
         "--log-format", "json", *args], check=False)
    out = [line for line in (done.stdout.decode() + done.stderr.decode()).splitlines()
           if line.strip() and not line.startswith("{")]
    assert len(out) == 1 and "Traceback" not in done.stderr.decode(), out
    return done.returncode, out[0]


async def host_status(p: Pool, host_id: int) -> dict[str, Any]:
    return (await p.statuses()).get(host_id, {})


async def in_use_count(p: Pool, host_id: int) -> int:
    """How many volumes ``host_id`` publishes as in use (its ``status``)."""
    status = await host_status(p, host_id)
    return int(((status.get("spm") or {}).get("in_use") or {}).get("volumes") or 0)


async def published_and_idle(p: Pool, host_id: int, hot_window_s: float) -> None:
    """Wait until ``host_id``'s monitor sees its guest and publishes its volume, then until
    the guest has been idle past the hot window (no extend request counts any more)."""
    async def listed() -> bool:
        return bool((await host_status(p, host_id)).get("vms")) and (
            await in_use_count(p, host_id) >= 1)

    await until(listed, 300, f"host {host_id}'s monitor to see the guest and publish its volume")
    await anyio.sleep(2 * hot_window_s)  # time is the subject: idle past the hot window


async def restart_alone(p: Pool, host_id: int, *, local: bool = False) -> None:
    """Stop ``host_id`` (it leaves the pool) and run it again in a PID namespace of its own,
    with its own /proc; stopped when the pool closes. ``local``: it comes back in local mode
    (``[service] extender = "local"``), its ``[lease]`` section (the pool's shared area)
    kept."""
    host = p.hosts[host_id]
    await host.stop()
    if local:
        text = host.config.read_text()
        assert 'extender = "mailbox"' in text
        host.config.write_text(text.replace('extender = "mailbox"', 'extender = "local"'))
    log = await anyio.to_thread.run_sync(lambda: open(host.log_path, "ab"))
    try:
        process = await anyio.open_process(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM",
             sys.executable, "-m", "autoextend", "--config", str(host.config),
             "--log-format", "json", "--log-level", "info", "run"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=dict(os.environ))
    finally:
        log.close()

    p.stack.push_async_callback(proc.stop, process)

    async def joined() -> bool:
        if local:  # no lease, no SPM section: the service answers
            return bool((await p.statuses()).get(host_id))
        status = (await p.statuses()).get(host_id, {}).get("spm") or {}
        return status.get("lease_health") == "ok" and bool(status.get("in_use"))

    host.process = process  # p.statuses() asks it; the pool's own stop finds it ended
    await until(joined, 300, f"host {host_id} to join again in its own PID namespace")


async def idle_guest_elsewhere(p: Pool, *, local: bool = False) -> tuple[int, int, PoolGuest]:
    """(guest host, asker, guest): an idle guest on the SPM's host, and the other host
    restarted alone (:func:`restart_alone`) to ask for what must be refused there. A trickle
    (16 KiB/s): the guest keeps running for minutes and asks for no extend."""
    guest_host = await p.wait_for_spm()
    asker = next(h for h in p.hosts if h != guest_host)
    await restart_alone(p, asker, local=local)
    g = await p.start_guest(guest_host, "idle", GuestJob(mib=512, rate_kib_s=16),
                            start_mib=160, virtual_mib=1024)
    return guest_host, asker, g
