"""Benchmark: end-to-end extend latency through the storage mailbox (multi-host).

Two ``autoextend run`` host processes share one pool (leases and mailboxes on one O_DIRECT
file, loop volumes); each runs a real TCG guest filling a thin volume with a small chunk, so
every extension goes host -> mailbox -> SPM (lvextend stand-in: the loop backend) -> reply ->
refresh -> re-arm. Latency runs from the threshold event to the re-armed threshold, as logged
by each host's monitor, with its phases (mailbox request, refresh).

Baseline: vdsm's end-to-end extend 0.77 / 1.15 / 1.39 s (min / avg / max).
Aim: p99 under 250 ms with the default mailbox intervals.

    python -m bench.pool_bench [--quick]        # JSON to bench/results/pool.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lab.demo import latency_ms
from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import pool
from bench import results_file

RESULTS = results_file("pool.json")


def ms(values: list[float]) -> dict[str, float]:
    return {**latency_ms(values), "n": len(values)}


async def main(quick: bool) -> dict[str, Any]:
    logs.configure("warning", "json")
    write = 256 if quick else 512
    async with pool(2, chunk_mib=32) as p:
        spm = await p.wait_for_spm()
        guests = [
            await p.start_guest(h, f"vm{h}", GuestJob(mib=write, seed=h), start_mib=64,
                                virtual_mib=1024)
            for h in p.hosts
        ]
        verified = [(await g.vm.result(timeout=900)).verified for g in guests]
        totals: list[float] = []
        requests: list[float] = []
        refreshes: list[float] = []
        by_host: dict[str, list[float]] = {}
        for host_id, host in p.hosts.items():
            for e in host.log_events():
                if e.get("event") == "extended" and e.get("component") == "monitor":
                    phases = e.get("phases", {})
                    totals.append(float(e["duration_s"]))
                    by_host.setdefault("spm" if host_id == spm else "other", []).append(
                        float(e["duration_s"]))
                    if "request" in phases:
                        requests.append(float(phases["request"]))
                    if "refresh" in phases:
                        refreshes.append(float(phases["refresh"]))
    return {
        "benchmark": "pool_end_to_end_extend",
        "hosts": 2,
        "guest_write_mib": write,
        "chunk_mib": 32,
        "data_verified": all(verified),
        "latency_ms": ms(totals),
        "latency_ms_by_host": {k: ms(v) for k, v in by_host.items()},
        "mailbox_request_ms": ms(requests),
        "refresh_ms": ms(refreshes),
        "baseline_vdsm_ms": {"min": 770, "avg": 1150, "max": 1390},
        "aim": "p99 < 250 ms",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="smaller run")
    args = parser.parse_args()
    start = Path("/proc/loadavg").read_text().split()[:3]
    result = anyio.run(main, args.quick)
    result["loadavg_start"] = [float(x) for x in start]
    result["loadavg_end"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
