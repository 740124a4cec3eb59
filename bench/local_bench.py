"""Benchmark: the local (single-host) extend path.

1. Real guests (TCG) filling thin volumes while the real service extends them: latency from
   the threshold event to the re-armed threshold on the larger volume (p50/p99/max), once
   over QMP and once through libvirtd (side by side).
2. The local extender alone over the loop volume backend: extensions per second, one at a
   time and concurrently.

Baseline: vdsm's published end-to-end extend, 0.77 / 1.15 / 1.39 s (min / avg / max).
Aim: p50 under 50 ms on the local path.

    python -m bench.local_bench [--quick]      # JSON to bench/results/local.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lab.demo import DemoOptions, run_demo, run_libvirt_demo
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.core import percentile
from autoextend.monitor.local import LocalExtender
from autoextend.volumes import LocalAuthority, VolumeRef

MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "local.json"


async def extender_throughput(volumes: int, rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ae-bench-local-", dir="/var/tmp"))
    backend = LoopVolumeBackend(str(root), 4 * MiB, LocalAuthority())
    extender = LocalExtender(backend)
    refs = [VolumeRef("bench", f"lv{i}") for i in range(volumes)]
    try:
        for ref in refs:
            await backend.create(ref, 4 * MiB)
        sequential: list[float] = []
        for r in range(rounds):
            for ref in refs[:20]:
                t0 = time.perf_counter()
                outcome = await extender.extend(ref, (r + 2) * 4 * MiB)
                sequential.append(time.perf_counter() - t0)
                assert outcome.ok, outcome
        t0 = time.perf_counter()
        target = (rounds + 2) * 4 * MiB
        async with anyio.create_task_group() as tg:
            for ref in refs:
                tg.start_soon(extender.extend, ref, target)
        burst = time.perf_counter() - t0
        return {
            "volumes": volumes,
            "sequential_ms": {
                "p50": round(percentile(sequential, 50) * 1000, 3),
                "p99": round(percentile(sequential, 99) * 1000, 3),
                "max": round(max(sequential) * 1000, 3),
            },
            "sequential_extends_per_s": round(len(sequential) / sum(sequential), 1),
            "concurrent_extends_per_s": round(volumes / burst, 1),
        }
    finally:
        for ref in refs:
            try:
                await backend.remove(ref)
            except Exception:
                pass
        shutil.rmtree(root, ignore_errors=True)


async def main(quick: bool) -> dict[str, Any]:
    logs.configure("warning", "json")
    guests = await run_demo(DemoOptions(
        vms=1 if quick else 2, write_mib=256 if quick else 512, chunk_mib=32,
        utilization_percent=50, start_mib=64, virtual_mib=1024,
    ))
    libvirt = await run_libvirt_demo(DemoOptions(
        vms=1 if quick else 2, write_mib=256 if quick else 512, chunk_mib=32,
        utilization_percent=50, start_mib=64, virtual_mib=1024, hypervisor="libvirt",
    ))
    extender = await extender_throughput(50 if quick else 200, 3 if quick else 10)

    def figures(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "vms": 1 if quick else 2,
            "extends": run["extends"],
            "pauses": run["pauses"],
            "latency_ms": run["latency_ms"],
            "extends_per_s": run["extends_per_s"],
            "data_verified": run["data_verified"],
        }

    return {
        "benchmark": "local_extend",
        "guests": figures(guests),
        "guests_libvirt": figures(libvirt),
        "extender": extender,
        "baseline_vdsm_end_to_end_ms": {"min": 770, "avg": 1150, "max": 1390},
        "aim": "p50 < 50 ms",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="smaller run (CI-sized)")
    args = parser.parse_args()
    result = anyio.run(main, args.quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
