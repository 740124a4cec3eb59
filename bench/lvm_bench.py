"""LVM throughput: one ``lvm`` process per command against a persistent ``lvm`` shell session.

Sets up a VG on one sparse-file loop-device PV (activation off, as on this machine), creates
``--lvs`` LVs of one extent, then times ``--extends`` extends (each LV grows by one extent,
so every extend really writes metadata) through :class:`LvmWriter` with each runner, one at
a time (the SPM's case: extends of one VG serialize on its lock).
Extends are interleaved across runners (LV 1 by each runner, then LV 2, ...): every
extend adds a segment, so the metadata grows as the run goes on. Each runner is measured
with lvm2's AIO off (the default here: its per-command io_destroy costs ~35 ms) and on.
Also times read-only ``lvs`` of one LV (a host's size query).

    python -m bench.lvm_bench [--lvs 500] [--extends 500]

Writes bench/results/lvm.json and prints it. Baseline: vdsm's lvextend, about 0.2 s per call
on its SPM, one at a time (about 5 extends/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lvm import loopdev
from autoextend.lvm.lvmconf import LvmCommandConfig
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import LvmRunner, ProcessRunner
from autoextend.lvm.shell import LvmShellRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.volumes import LocalAuthority, VolumeRef
from bench import results_file

RESULTS = results_file("lvm.json")
MiB = 1 << 20
EXTENT = 4 * MiB


def _sparse_file(path: str, size: int) -> None:
    with open(path, "wb") as file:
        file.truncate(size)


def _stats(latencies: list[float], total: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "total_s": round(total, 3),
        "per_second": round(len(ordered) / total, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def _extends_interleaved(
    writers: dict[str, LvmWriter], refs: list[VolumeRef]
) -> dict[str, dict[str, float]]:
    """Extend every LV by one extent with each runner in turn, interleaved, so that the
    metadata growing with every extend weighs on all runners alike."""
    latencies: dict[str, list[float]] = {name: [] for name in writers}
    totals = dict.fromkeys(writers, 0.0)
    sizes = {ref: EXTENT for ref in refs}
    for ref in refs:
        for name, writer in writers.items():
            sizes[ref] += EXTENT
            started = time.perf_counter()
            result = await writer.extend(ref, sizes[ref])
            elapsed = time.perf_counter() - started
            assert result.changed and result.size == sizes[ref]
            latencies[name].append(elapsed)
            totals[name] += elapsed
    return {name: _stats(latencies[name], totals[name]) for name in writers}


async def _reads(reader: LvmReader, refs: list[VolumeRef]) -> dict[str, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    for ref in refs:
        one = time.perf_counter()
        await reader.lv(ref)
        latencies.append(time.perf_counter() - one)
    return _stats(latencies, time.perf_counter() - started)


async def run(lv_count: int, extend_count: int) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="autoextend-lvmbench-", dir="/var/tmp")
    device = ""
    shell = LvmShellRunner(timeout_s=120)
    try:
        pv_file = os.path.join(workdir, "pv.img")
        # Room for every LV at 1 + 4 extents (one extend per runner) and some slack.
        await anyio.to_thread.run_sync(_sparse_file, pv_file, (lv_count * 6 + 64) * EXTENT)
        device = await loopdev.attach(pv_file)
        config = LvmCommandConfig((device,))
        vg = f"aebench{os.getpid()}"
        setup = LvmWriter(shell, config, LocalAuthority())
        await setup.pvcreate([device], metadata_size=64 * MiB)
        await setup.vgcreate(vg, [device], extent_size=EXTENT)
        started = time.perf_counter()
        refs = [VolumeRef(vg, f"lv{index:04d}") for index in range(lv_count)]
        for ref in refs:
            await setup.create_lv(ref, EXTENT)
        setup_s = time.perf_counter() - started
        targets = refs[:extend_count]

        process = ProcessRunner(timeout_s=120, max_concurrent=10)
        process_aio = ProcessRunner(timeout_s=120, use_aio=True)
        shell_aio = LvmShellRunner(timeout_s=120, use_aio=True)
        runners: dict[str, LvmRunner] = {
            "process_host_lvm_conf_aio": process_aio,
            "shell_aio": shell_aio,
            "process": process,
            "shell": shell,
        }
        writers = {}
        for name, runner in runners.items():
            writers[name] = LvmWriter(runner, config, LocalAuthority())
            await writers[name].vg(vg)  # cache the extent size, as a long-running SPM has
        results: dict[str, Any] = {
            f"extend_{name}": stats
            for name, stats in (await _extends_interleaved(writers, targets)).items()
        }
        for name, runner in (
            ("process_host_lvm_conf_aio", process_aio), ("process", process), ("shell", shell)
        ):
            results[f"read_lv_{name}"] = await _reads(LvmReader(runner, config), targets[:100])
        await shell_aio.aclose()
        version = await anyio.run_process(["lvm", "version"], check=False)
        lvm_version = version.stdout.decode().splitlines()[0].split(":", 1)[1].strip()
        return {
            "benchmark": "lvm_bench",
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "lvm": lvm_version},
            "setup": {"pvs": 1, "lvs": lv_count, "extent_size": EXTENT,
                      "activation": False, "create_lvs_s": round(setup_s, 1)},
            "extends_per_runner": len(targets),
            "results": results,
            "speedup_shell_vs_process": round(
                results["extend_shell"]["per_second"]
                / results["extend_process"]["per_second"], 2
            ),
            "baseline": {"vdsm_lvextend_s": 0.2, "vdsm_extends_per_second": 5.0},
            "notes": "extend = one lvextend --driverloaded n (extent size cached); "
            "process/shell run lvm2 with use_aio=0 from a private lvm.conf, the *_aio rows with "
            "lvm2's default AIO",
        }
    finally:
        await shell.aclose()
        if device:
            await loopdev.detach(device)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lvs", type=int, default=500)
    parser.add_argument("--extends", type=int, default=500)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logs.configure("warning", "json")  # logs to stderr; stdout is the JSON result
    start = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    result = anyio.run(run, args.lvs, min(args.extends, args.lvs))
    result["loadavg_start"] = start
    result["loadavg_end"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    text = json.dumps(result, indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
