"""Benchmark: the local (single-host) extend path, against its floor, phase by phase.

Parts (``--part``; each under 5 minutes, each records the load average at its start and end):

``floor``
    Real TCG guests write 512 MiB into a 64 MiB thin volume (qcow2 on a loop device, 64 MiB
    chunks, utilization 50 %: 32 MiB watermark). Rounds alternate, on the same guest image,
    sizes and chunk: the floor (``bench/floor.py``: grow, refresh, re-arm, nothing else),
    the real service over QMP on the old path (``autoextend_before``: ``fast_resume`` off, a
    migration probe before every extension and a full look after it) and on the current
    one (``autoextend``). Each reports the QMP commands per resume and per re-arm
    (``autoextend/lab/qmpcount.py``). Latency per extension (event to re-armed threshold) with
    autoextend's phases; the ratio autoextend / floor at p50 and p99.
``libvirt``
    The same guests as libvirt domains (an isolated libvirtd), the service's libvirt backend.
``pauses``
    ENOSPC pause -> resume: a guest writing with a watermark it cannot outrun (4 MiB chunks,
    utilization 90 %: 0.4 MiB watermark, less than one 1 MiB guest write), over QMP and
    over libvirt. Measured by the service
    (pause noticed -> resume sent); over QMP also by QEMU's own clock (STOP to RESUME event
    timestamps, on the lab's second QMP socket), the floor's the same way.
``extender``
    The local extender alone over 200 loop volumes: one at a time and all at once.

    python -m bench.local_bench [--part floor|libvirt|pauses|extender] [--quick]

Results are merged into ``bench/results/local.json`` (one key per part).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lab.demo import DemoOptions, run_libvirt_demo
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.qemu import guest_spec, launch
from autoextend.lab.qmpcount import CommandCounts
from autoextend.lab.singlehost import create_qcow2_disk, host_settings, lab_host
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.core import percentile
from autoextend.monitor.local import LocalExtender
from autoextend.monitor.observer import Tally
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import LocalAuthority, VolumeRef
from bench import results_file
from bench.floor import FloorExtender

MiB = 1 << 20
RESULTS = results_file("local.json")
PHASE_ORDER = ("wait", "decision", "extend", "refresh", "extender", "rearm", "total")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * 1000, 3),
        "p99": round(percentile(values, 99) * 1000, 3),
        "max": round(max(values, default=0.0) * 1000, 3),
    }


def phase_table(phases: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    names = [p for p in PHASE_ORDER if any(p in x for x in phases)]
    return {name: ms([x[name] for x in phases if name in x]) for name in names}


class QemuPauses:
    """STOP -> RESUME from QEMU's own event timestamps, on the lab's QMP socket."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    async def watch(self, client: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with client.listener() as events:
            task_status.started()
            stopped: float | None = None
            async for event in events:
                ts = event.get("timestamp") or {}
                t = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
                if event.get("event") == "STOP":
                    stopped = t
                elif event.get("event") == "RESUME" and stopped is not None:
                    self.latencies.append(t - stopped)
                    stopped = None


async def floor_round(workdir: Path, image: Any, job: GuestJob, chunk_mib: int, util: int,
                      start_mib: int, name: str) -> tuple[FloorExtender, QemuPauses]:
    volumes = LoopVolumeBackend(str(workdir / "floor-volumes"), 4 * MiB, LocalAuthority())
    async with AsyncExitStack() as stack:
        ref, device = await create_qcow2_disk(volumes, stack, VolumeRef("floor", name),
                                              start_mib, 1024)
        vm = await launch(guest_spec(name, image, [device], job), workdir / "floor-vms" / name)
        stack.push_async_callback(vm.stop)
        client = await vm.connect_qmp("floor")  # the instance's one QMP socket
        chunk = chunk_mib * MiB
        floor = FloorExtender(client, volumes.file_path(ref), device, "file0", chunk,
                              max(1, (100 - util) * chunk // 100))
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(floor.run)
                result = await vm.result(timeout=600)
                await vm.wait_exit(timeout=60)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await client.disconnect()  # QEMU has exited: EOF is expected
        if not result.verified:
            raise RuntimeError(f"floor guest {name}: data not verified: {result}")
    pauses = QemuPauses()
    pauses.latencies = floor.qemu_pauses
    return floor, pauses


async def autoextend_round(host: Any, job: GuestJob, start_mib: int, name: str) -> QemuPauses:
    guest = await host.start_guest(name, job, start_mib=start_mib, virtual_mib=1024)
    pauses = QemuPauses()
    watcher = await guest.vm.connect_qmp("pauses")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pauses.watch, watcher)
            result = await guest.vm.result(timeout=600)
            await guest.vm.wait_exit(timeout=60)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await watcher.disconnect()  # QEMU has exited: EOF is expected
    if not result.verified:
        raise RuntimeError(f"guest {name}: data not verified: {result}")
    return pauses


class Switch:
    """The lab host's observer: passes each event to the observers of the variant that
    runs now (``to``)."""

    def __init__(self) -> None:
        self.to: tuple[Any, ...] = ()

    def notify(self, event: Any) -> None:
        for observer in self.to:
            observer.notify(event)


@dataclass
class Variant:
    """One way of running autoextend in the comparison (``fast_resume`` on or off)."""

    fast_resume: bool
    tally: Tally = field(default_factory=Tally)
    counts: CommandCounts = field(default_factory=CommandCounts)
    qemu_pauses: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        t, c = self.tally, self.counts
        return {"fast_resume": self.fast_resume, "extends": t.extends,
                "pauses": t.enospc_pauses, "phases_ms": phase_table(t.phases),
                "pause_resume_service_ms": ms(t.resume_latencies),
                "pause_resume_qemu_ms": ms(self.qemu_pauses),
                "qmp_commands": {"ok_to_cont": counted(c.ok_to_cont),
                                 "pause_to_cont": counted(c.pause_to_cont),
                                 "event_to_rearm": counted(c.event_to_rearm)}}


def counted(windows: list[list[str]]) -> dict[str, float]:
    """QMP commands per window (a resume, a re-arm): n, p50, p99, max."""
    sizes = [float(len(w)) for w in windows]
    return {"n": len(sizes), "p50": percentile(sizes, 50), "p99": percentile(sizes, 99),
            "max": max(sizes, default=0.0)}


async def side_by_side(rounds: int, write_mib: int, chunk_mib: int, util: int,
                       start_mib: int, *, before: bool = True) -> dict[str, Any]:
    """Alternating rounds on the same guest job: the floor, then autoextend over QMP on the
    old path (``before``: ``fast_resume`` off, a migration probe before every extension and
    a full look after it), then on the current path."""
    base = Path(tempfile.mkdtemp(prefix="ae-bench-floor-", dir="/var/tmp"))
    switch = Switch()
    variants = {"autoextend": Variant(True)}
    if before:
        variants = {"autoextend_before": Variant(False), **variants}
    floor_phases: list[dict[str, float]] = []
    floor_pauses: list[float] = []
    floor_pause_count = 0
    try:
        settings = host_settings(base, chunk_mib=chunk_mib, utilization_percent=util)
        async with lab_host(settings, workdir=base, observer=switch) as host:
            hv = host.service.hypervisor
            assert isinstance(hv, QmpHypervisor)
            for v in variants.values():
                v.counts.attach(hv, host.service.monitor)
            job = await anyio.to_thread.run_sync(with_expected_md5, GuestJob(mib=write_mib))
            for r in range(rounds):
                floor, fp = await floor_round(base, host.image, job, chunk_mib, util,
                                              start_mib, f"floor{r}")
                floor_phases += floor.phases
                floor_pauses += fp.latencies
                floor_pause_count += floor.pauses
                for key, v in variants.items():
                    host.service.monitor.ctx.fast_resume = v.fast_resume
                    switch.to = (v.tally, v.counts)
                    ap = await autoextend_round(host, job, start_mib, f"{key}{r}")
                    v.qemu_pauses += ap.latencies
                switch.to = ()
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))
    fl = phase_table(floor_phases)
    out: dict[str, Any] = {
        "rounds": rounds, "write_mib": write_mib, "chunk_mib": chunk_mib,
        "utilization_percent": util, "start_mib": start_mib,
        "floor": {"extends": len(floor_phases), "pauses": floor_pause_count, "phases_ms": fl,
                  "pause_resume_qemu_ms": ms(floor_pauses)},
    }
    for key, v in variants.items():
        out[key] = v.figures()
        ae = out[key]["phases_ms"]
        suffix = key.removeprefix("autoextend")
        out["ratio" + suffix] = {
            q: round(ae["total"][q] / fl["total"][q], 2) if fl.get("total", {}).get(q) else None
            for q in ("p50", "p99")
        } if "total" in ae else {}
        qemu, floor_qemu = out[key]["pause_resume_qemu_ms"], out["floor"]["pause_resume_qemu_ms"]
        out["pause_ratio" + suffix] = {
            q: round(qemu[q] / floor_qemu[q], 2) if floor_qemu.get(q) else None
            for q in ("p50", "p99")}
    return out


async def libvirt_runs(rounds: int, write_mib: int, chunk_mib: int, util: int,
                       start_mib: int) -> dict[str, Any]:
    tally = Tally()
    verified = True
    for _ in range(rounds):
        summary = await run_libvirt_demo(DemoOptions(
            vms=1, write_mib=write_mib, chunk_mib=chunk_mib, utilization_percent=util,
            start_mib=start_mib, virtual_mib=1024, hypervisor="libvirt",
        ), tally=tally)
        verified = verified and summary["data_verified"]
    return {
        "rounds": rounds, "write_mib": write_mib, "chunk_mib": chunk_mib,
        "utilization_percent": util, "start_mib": start_mib,
        "extends": tally.extends, "pauses": tally.enospc_pauses, "data_verified": verified,
        "phases_ms": phase_table(tally.phases),
        "pause_resume_service_ms": ms(tally.resume_latencies),
    }


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
            "sequential_ms": ms(sequential),
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


async def run_part(part: str, quick: bool, smoke: bool = False) -> dict[str, Any]:
    logs.configure("warning", "json")
    if smoke:  # one short guest per side: does every path still run (figures meaningless)
        if part == "floor":
            return await side_by_side(1, 48, 16, 50, 16, before=False)
        if part == "libvirt":
            return await libvirt_runs(1, 48, 16, 50, 16)
        if part == "pauses":
            return {"qmp": await side_by_side(1, 24, 4, 90, 8, before=False),
                    "libvirt": await libvirt_runs(1, 24, 4, 90, 8)}
        if part == "extender":
            return await extender_throughput(5, 1)
        raise ValueError(part)
    rounds = 1 if quick else 4
    if part == "floor":
        return await side_by_side(rounds, 256 if quick else 512, 64, 50, 64)
    if part == "libvirt":
        return await libvirt_runs(1 if quick else 3, 256 if quick else 512, 64, 50, 64)
    if part == "pauses":
        qmp = await side_by_side(1 if quick else 2, 128 if quick else 256, 4, 90, 16)
        virt = await libvirt_runs(1, 128 if quick else 256, 4, 90, 16)
        return {"qmp": qmp, "libvirt": virt}
    if part == "extender":
        return await extender_throughput(50 if quick else 200, 3 if quick else 10)
    raise ValueError(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--part", choices=("floor", "libvirt", "pauses", "extender"),
                        action="append", help="run only these parts (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller run (CI-sized)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run: it still runs, figures meaningless")
    args = parser.parse_args()
    results: dict[str, Any] = {"benchmark": "local_extend"}
    if RESULTS.exists():
        try:
            results = json.loads(RESULTS.read_text())
        except ValueError:
            pass
    parts = args.part or ["floor", "libvirt", "pauses", "extender"]
    if len(parts) > 1:
        # One process per part: libvirtaio registers on one asyncio loop per process, and
        # each part runs its own loop (the libvirt and pauses parts both use libvirt).
        for part in parts:
            subprocess.run([sys.executable, "-m", "bench.local_bench", "--part", part,
                            *(["--quick"] if args.quick else []),
                            *(["--smoke"] if args.smoke else [])], check=True)
        return
    for part in parts:
        start = loadavg()
        t0 = time.monotonic()
        figures = anyio.run(run_part, part, args.quick, args.smoke)
        results[part] = {**figures, "elapsed_s": round(time.monotonic() - t0, 1),
                         "loadavg_start": start, "loadavg_end": loadavg(),
                         "quick": args.quick, "smoke": args.smoke,
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({part: results[part]}, indent=2))


if __name__ == "__main__":
    main()
