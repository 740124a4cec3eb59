"""Lease benchmark: ``python -m bench.lease_bench`` -> bench/results/lease.json.

Figures (real O_DIRECT I/O on a file under /var/tmp):
- takeover after SIGKILL of the holder at T=1 s, W=2 s (measured from the holder's last
  renewal start to the other process holding the lease), next to sanlock's formula;
- free-acquire latency (p50/p99) and I/O per free acquire;
- I/O per renewal (aim: 1 read + 1 write);
- idle I/O per second of a holder and of a waiting contender.
sanlock itself is not run side by side yet (see "sanlock" in the JSON for the reason).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.clock import MonotonicClock
from autoextend.directio import DirectStorage, open_storage
from autoextend.lease.config import LeaseSettings
from autoextend.lease.service import LeaseService
from autoextend.lease.timeouts import lease_timeouts
from tests.lease.takeover import measure
from tests.lease.torture_setup import format_file

RESULTS = Path(__file__).parent / "results" / "lease.json"
T_TAKEOVER, W_TAKEOVER = 1.0, 2.0


def _settings(host_id: int, t: float, w: float) -> LeaseSettings:
    return LeaseSettings(host_id=host_id, host_name=f"bench{host_id}", io_timeout_s=t,
                         watchdog_fire_timeout_s=w, max_hosts=16)


def _io(storage: DirectStorage) -> tuple[int, int]:
    return storage.stats.reads, storage.stats.writes


async def free_acquire(area: Path, rounds: int = 30) -> dict[str, Any]:
    storage = await open_storage(str(area), io_timeout=1.0)
    lease = LeaseService(storage, _settings(1, 1.0, 2.0), MonotonicClock())
    times: list[float] = []
    ios: list[int] = []
    async with lease.joined():
        for _ in range(rounds):
            r0, w0 = _io(storage)
            start = time.monotonic()
            async with lease.spm():
                times.append(time.monotonic() - start)
                r1, w1 = _io(storage)
                ios.append((r1 - r0) + (w1 - w0))
    await storage.close()
    times.sort()
    return {"rounds": rounds, "p50_ms": round(statistics.median(times) * 1000, 3),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 3),
            "io_per_acquire_max": max(ios), "io_per_acquire_median": statistics.median(ios)}


async def renewal_and_idle(area: Path, seconds: float = 6.0) -> dict[str, Any]:
    t = 1.0
    holder_io = await open_storage(str(area), io_timeout=t)
    waiter_io = await open_storage(str(area), io_timeout=t)
    clock = MonotonicClock()
    holder = LeaseService(holder_io, _settings(1, t, 2.0), clock)
    waiter = LeaseService(waiter_io, _settings(2, t, 2.0), clock)
    out: dict[str, Any] = {"io_timeout_s": t}
    async with holder.joined(), waiter.joined(), holder.spm(), anyio.create_task_group() as tg:
        async def wait_for_spm() -> None:
            async with waiter.spm():
                pass

        tg.start_soon(wait_for_spm)
        await anyio.sleep(0.5)
        hr, hw = _io(holder_io)
        wr, ww = _io(waiter_io)
        renewals0 = holder.stats.renewals
        await anyio.sleep(seconds)
        hr2, hw2 = _io(holder_io)
        wr2, ww2 = _io(waiter_io)
        renewals = holder.stats.renewals - renewals0
        out["renewals"] = renewals
        out["holder_reads_per_renewal"] = round((hr2 - hr) / max(1, renewals), 3)
        out["holder_writes_per_renewal"] = round((hw2 - hw) / max(1, renewals), 3)
        out["holder_idle_io_per_s"] = round(((hr2 - hr) + (hw2 - hw)) / seconds, 3)
        out["waiter_idle_io_per_s"] = round(((wr2 - wr) + (ww2 - ww)) / seconds, 3)
        out["delta_read_bytes"] = holder.layout.delta_length
        tg.cancel_scope.cancel()
    await holder_io.close()
    await waiter_io.close()
    return out


async def main() -> dict[str, Any]:
    logs.configure("error", "json")
    to = lease_timeouts(T_TAKEOVER, W_TAKEOVER)
    result: dict[str, Any] = {"machine_note": "2 cores, ext4 file under /var/tmp, O_DIRECT|O_DSYNC"}
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-bench-") as tmp:
        area = Path(tmp) / "area.img"
        await format_file(area, 16)
        result["free_acquire"] = await free_acquire(area)
        await format_file(area, 16)
        result["renewal_and_idle"] = await renewal_and_idle(area)
        samples = []
        for _ in range(2):
            await format_file(area, 16)
            took = await anyio.to_thread.run_sync(
                lambda: measure(area, T_TAKEOVER, W_TAKEOVER, kill=True, timeout=120)
            )
            samples.append(round(took.seconds, 3))
        await format_file(area, 16)
        release = await anyio.to_thread.run_sync(
            lambda: measure(area, T_TAKEOVER, W_TAKEOVER, kill=False, timeout=60)
        )
    result["takeover_after_sigkill"] = {
        "io_timeout_s": T_TAKEOVER, "watchdog_fire_timeout_s": W_TAKEOVER,
        "measured_s": samples,
        "bound_min_s": to.takeover_min, "bound_max_fast_s": to.takeover_max_fast,
        "bound_max_worst_s": to.takeover_max_worst,
        "sanlock_formula_same_T_W60_s": [8 * T_TAKEOVER + 60, 15 * T_TAKEOVER + 60],
        "sanlock_formula_same_T_W2_s": [8 * T_TAKEOVER + W_TAKEOVER, 15 * T_TAKEOVER + W_TAKEOVER],
        "sanlock_defaults_T10_W60_s": [140, 210],
    }
    result["takeover_after_release_s"] = round(release.seconds, 4)
    result["sanlock"] = {
        "ran": False,
        "reason": "side-by-side sanlock run (LD_PRELOAD setrlimit shim, one daemon per mount "
                  "namespace) not implemented yet; compared against its formulas only",
    }
    return result


if __name__ == "__main__":
    data = anyio.run(main)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
