"""The sanlock *engine's* figures in the lease benchmark (bench/lease_bench.py): what
``[lease] engine = "sanlock"`` costs autoextend, next to the native engine's figures.

- free acquire: the engine's acquire step in this process, through libsanlock
  (autoextend/lease/sanlock_lib.py) on a registered connection to host A's daemon
  (``SANLOCK_RUN_DIR`` = its run directory seen from outside its namespace): ``acquire``
  (OWNER_NOWAIT) + ``inquire`` for the lver, then ``release``;
- takeover after SIGKILL of the SPM *process*: a registered process on host A holds the SPM
  resource and is SIGKILLed; its daemon releases the lease, and host B's acquire (retried
  every 0.1 s through the CLI) gets it. The engine retries every ``acquire_poll`` (T), so it
  adds up to one T to this figure. (The native engine's process *is* its host lease: its
  SIGKILL takeover is 8T+W, measured by bench/lease_figures.py.)
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from autoextend.lease import sanlock_lib as sl
from bench.sanlock_peer import Cluster, SanlockHost, holder, percentiles

ROUNDS = 30


async def engine_free_acquire(a: SanlockHost, cluster: Cluster) -> dict[str, Any]:
    path = str(cluster.path)
    res = sl.resource("LS", "SPM", path, sl_offset(cluster), 512)
    # libsanlock reads SANLOCK_RUN_DIR once, at its first connection; restore the variable at
    # once so that the processes started later (host B's clients) do not inherit it.
    before = os.environ.get("SANLOCK_RUN_DIR")
    os.environ["SANLOCK_RUN_DIR"] = a.daemon.run_dir
    try:
        sock = await anyio.to_thread.run_sync(sl.register)
    finally:
        if before is None:
            del os.environ["SANLOCK_RUN_DIR"]
        else:
            os.environ["SANLOCK_RUN_DIR"] = before
    times: list[float] = []
    try:
        for _ in range(ROUNDS):
            start = time.monotonic()
            await anyio.to_thread.run_sync(lambda: sl.acquire(sock, res))
            held = await anyio.to_thread.run_sync(sl.inquire, sock)
            times.append(time.monotonic() - start)
            assert "LS:SPM" in held, held
            await anyio.to_thread.run_sync(sl.release, sock, res)
    finally:
        os.close(sock)
    return {"rounds": len(times), **percentiles(times),
            "note": "acquire (OWNER_NOWAIT) + inquire through libsanlock, in-process"}


def sl_offset(cluster: Cluster) -> int:
    return int(cluster.resource.rsplit(":", 1)[1])


async def engine_process_crash_takeover(a: SanlockHost, b: SanlockHost,
                                        cluster: Cluster) -> dict[str, Any]:
    async with holder(a, cluster) as proc:
        proc.kill()
        killed = time.monotonic()
        await proc.wait()
    tries = 0
    with anyio.fail_after(30):
        while True:
            tries += 1
            result = await b.client("command", "-r", cluster.resource, "-c", "/bin/true",
                                    check=False)
            if result.returncode == 0:
                acquired = time.monotonic()
                break
            await anyio.sleep(0.1)
    return {"from_kill_s": round(acquired - killed, 3), "tries": tries,
            "note": "B retries every 0.1 s through the CLI (~10 ms per try); the engine "
                    "itself retries every acquire_poll (T)"}
