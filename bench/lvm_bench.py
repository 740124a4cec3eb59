"""LVM throughput: one ``lvm`` process per command against a persistent ``lvm`` shell session.

Sets up a VG on one sparse-file loop-device PV (activation off, as on this machine), creates
``--lvs`` LVs of one extent, then times ``--extends`` extends (each LV grows by one extent,
so every extend really writes metadata) through :class:`LvmWriter` with each runner, one at
a time (the SPM's case: extends of one VG serialize on its lock).
Extends are interleaved across runners (LV 1 by each runner, then LV 2, ...): every
extend adds a segment, so the metadata grows as the run goes on. Each runner is measured
with lvm2's AIO off (the default here: its per-command io_destroy costs ~35 ms) and on.
Also times read-only ``lvs`` of one LV (a host's size query).

Then VGs in parallel, as on the SPM (``parallel_vgs``): extends through the SPM's executor
and the default runner (a persistent ``lvm`` shell per VG), first into one VG, then into 4
VGs at once, in the same run; ``--parallel-runs`` runs (default 3, min/median/max and the load
average of each). Five VGs of one loop PV each, so that every VG takes the same number of
extends (the metadata grows with each) and the 1-VG case is not favoured. Goal: 4 VGs give at
least 3x the extends/s of one (issue 32). On a shared machine the figures are indicative.

    python -m bench.lvm_bench [--lvs 500] [--extends 500] [--parallel-runs 3]
                              [--parallel-extends 40]

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
from autoextend.clock import ManualClock
from autoextend.lvm import loopdev
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import LvmRunner, ProcessRunner
from autoextend.lvm.shell import LvmShellRunner, PerVgShellRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.spm.execute import Executor
from autoextend.spm.wire import Request, Status
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


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2)}


PARALLEL_VGS = 4
PARALLEL_LVS = 8  # LVs per VG, extended in turn


async def _timed_extends(executor: Executor, vgs: list[str], sizes: dict[VolumeRef, int],
                         per_vg: int) -> float:
    """``per_vg`` extends (one extent each) into each of ``vgs``, all VGs at once, each VG's
    LVs asking together (one request per LV at a time, so each one really grows it; the
    executor runs one per VG at a time); extends/s."""
    request_ids = iter(range(1, 1 << 30))
    left = dict.fromkeys(vgs, per_vg)

    async def lv_worker(ref: VolumeRef) -> None:
        while left[ref.vg] > 0:
            left[ref.vg] -= 1
            sizes[ref] += EXTENT
            verdict = await executor.execute(
                1, 1, Request(next(request_ids), ref.vg, ref.lv, sizes[ref]))
            assert verdict is not None and verdict.status == Status.OK, verdict
            assert verdict.size == sizes[ref], (verdict, sizes[ref])

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for vg in vgs:
            for index in range(PARALLEL_LVS):
                tg.start_soon(lv_worker, VolumeRef(vg, f"lv{index}"))
    return len(vgs) * per_vg / (time.perf_counter() - started)


async def parallel_vgs(runs: int, per_vg: int) -> dict[str, Any]:
    """1 VG against 4 VGs at once, through the SPM's executor and the default runner."""
    workdir = tempfile.mkdtemp(prefix="autoextend-lvmbench-par-", dir="/var/tmp")
    devices: list[str] = []
    runner = PerVgShellRunner(timeout_s=120)
    try:
        extents = PARALLEL_LVS + runs * per_vg * 2 + 64
        for index in range(PARALLEL_VGS + 1):
            path = os.path.join(workdir, f"pv{index}.img")
            await anyio.to_thread.run_sync(_sparse_file, path, extents * EXTENT + 64 * MiB)
            devices.append(await loopdev.attach(path))
        config = LvmCommandConfig(tuple(devices))
        writer = LvmWriter(runner, config, LocalAuthority())
        vgs = [f"aebenchp{os.getpid()}v{index}" for index in range(PARALLEL_VGS + 1)]
        sizes: dict[VolumeRef, int] = {}
        for vg, device in zip(vgs, devices, strict=True):
            await writer.pvcreate([device])
            await writer.vgcreate(vg, [device], extent_size=EXTENT)
            for index in range(PARALLEL_LVS):
                ref = VolumeRef(vg, f"lv{index}")
                await writer.create_lv(ref, EXTENT)
                sizes[ref] = EXTENT
        backend = LvmVolumeBackend(runner, LvmReader(runner, config), writer, tuple(vgs))
        executor = Executor(backend, LocalAuthority(), ManualClock(), hot_window_s=0.0,
                            max_concurrent=10)
        solo, group = vgs[:1], vgs[1:]
        rows = []
        for number in range(runs):
            load = _loadavg()
            if number % 2:  # alternate which goes first, against a drifting machine
                four = await _timed_extends(executor, group, sizes, per_vg)
                one = await _timed_extends(executor, solo, sizes, per_vg)
            else:
                one = await _timed_extends(executor, solo, sizes, per_vg)
                four = await _timed_extends(executor, group, sizes, per_vg)
            rows.append({"run": number + 1, "loadavg_1m": load[0],
                         "one_vg_per_s": round(one, 1), "four_vgs_per_s": round(four, 1),
                         "ratio": round(four / one, 2)})
        for vg in vgs:
            await writer.vgremove(vg)
        return {
            "setup": {"vgs": PARALLEL_VGS, "pvs_per_vg": 1, "lvs_per_vg": PARALLEL_LVS,
                      "activation": False, "extends_per_vg_per_run": per_vg,
                      "runner": "shell (a persistent lvm shell per VG)",
                      "path": "spm.execute.Executor (limiter 10, per-VG lock) -> LvmWriter"},
            "runs": rows,
            "one_vg_per_s": _spread([row["one_vg_per_s"] for row in rows]),
            "four_vgs_per_s": _spread([row["four_vgs_per_s"] for row in rows]),
            "ratio_four_to_one": _spread([row["ratio"] for row in rows]),
            "goal_ratio": 3.0,
            "notes": "each run: one VG, and 4 other VGs at once (same extends per VG; which "
            "goes first alternates); "
            "indicative on a shared machine (loadavg_1m per run). At most one lvm2 command "
            "per VG is in flight: tests/lvm/test_parallel_vgs.py asserts it",
        }
    finally:
        await runner.aclose()
        for device in devices:
            await loopdev.detach(device)
        shutil.rmtree(workdir, ignore_errors=True)


async def run(lv_count: int, extend_count: int, parallel_runs: int = 3,
              parallel_extends: int = 40) -> dict[str, Any]:
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
            "parallel_vgs": await parallel_vgs(parallel_runs, parallel_extends),
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
    parser.add_argument("--parallel-runs", type=int, default=3,
                        help="runs of the 1 VG against 4 VGs comparison")
    parser.add_argument("--parallel-extends", type=int, default=40,
                        help="extends per VG in each of those runs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    for name in ("lvs", "extends", "parallel_runs", "parallel_extends"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    logs.configure("warning", "json")  # logs to stderr; stdout is the JSON result
    start = _loadavg()
    result = anyio.run(run, args.lvs, min(args.extends, args.lvs), args.parallel_runs,
                       args.parallel_extends)
    result["loadavg_start"] = start
    result["loadavg_end"] = _loadavg()
    text = json.dumps(result, indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
