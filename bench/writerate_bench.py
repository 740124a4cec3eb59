"""Benchmark: how fast may a writer go without an ENOSPC: fixed chunks, write-rate chunks and
write-rate chunks with the throttle (``chunk_mode = "write_rate_throttle"``), in one run.

A TCG guest cannot write fast enough to find the limit, so the writer works inside QEMU: a
guest-less QEMU (``-S``) with one qcow2 drive on a thin loop volume (as the lab's guests
have), written with ``qemu-io -d`` through ``human-monitor-command`` on the lab's own QMP
socket while the real service watches the VM's other socket and extends the volume. ``-d``
names the virtio device, so the writes go through the device's BlockBackend, as a guest's
do (``cache=none``: O_DIRECT on the volume), and a ``block_set_io_throttle`` limit holds
them back as it would hold a guest. Each block is written with a pattern byte derived from
its index (``write -P``) and read back and compared at the end (``read -P``): the data is
verified, not just the sizes.

First the writer alone: one step on a volume that needs no extension, unpaced (its ceiling
under the load of the moment). Then, for each mode and each target rate (paced block by
block), on a fresh volume: the ENOSPC write failures (the writer retries the block after
20 ms, as a resumed guest would: each is a pause), the rate reached, the stranded space at
the end (physical size minus the highest written offset) and its mean and maximum over the
step (sampled after each block: what the guest would strand had it stopped there; the value
at the end alone depends on where the last chunk happens to end), the throttle's seconds and
lowest limit, the near-miss figures (the watermark's fraction left when each extension
landed), and what held the rate back (:func:`limited_by`).

    python -m bench.writerate_bench [--quick]     # JSON to bench/results/writerate.json

The writes are ``aio_write`` (one at a time, the next when QEMU printed the last one's
completion): a synchronous ``write`` would hold QEMU's monitor for as long as a throttled
write waits, and with it every command the service sends.

Lab scale: 16 MiB fixed chunks at 50 % utilization (8 MiB watermark); write-rate chunks from
16 MiB to 1 GiB (the same 16 MiB until a rate is measured); the combined mode's chunks from
12 MiB (a 6 MiB watermark: more than one 4 MiB block) up to the fixed 16 MiB, the throttle
carrying the rest. ``fixed_16mib_throttle`` shows what the throttle alone does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lab import qemu as labqemu
from autoextend.lab.qemu import Drive, VmSpec, launch
from autoextend.lab.singlehost import create_qcow2_disk, host_settings
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.chunking import p99
from autoextend.monitor.observer import (
    MonitorEvent,
    Tally,
    Throttled,
    ThrottleLifted,
    WatermarkLeft,
)
from autoextend.service import Service
from autoextend.volumes import LocalAuthority, VolumeRef
from bench import results_file

MiB = 1 << 20
RESULTS = results_file("writerate.json")
BLOCK = 4 * MiB
START_MIB = 32
VIRTUAL_MIB = 4096

#: How often the writer looks for its write's completion in QEMU's output.
POLL_S = 0.0005
#: A step reaching less than this share of its target rate was held back.
REACHED = 0.9

_FIXED: dict[str, Any] = {"chunk_mib": 16, "utilization_percent": 50, "chunk_mode": "fixed"}
_RATE: dict[str, Any] = {"chunk_mib": 16, "utilization_percent": 50, "rate_margin": 2.0,
                         "rate_half_life_s": 30.0, "assumed_latency_s": 0.1}
POLICIES: dict[str, dict[str, Any]] = {
    "fixed_16mib": {**_FIXED, "throttle": False},
    "fixed_16mib_throttle": {**_FIXED, "throttle": True},
    "write_rate": {**_RATE, "chunk_mode": "write_rate", "min_chunk_mib": 16,
                   "max_chunk_mib": 1024, "throttle": False},
    "write_rate_throttle": {**_RATE, "chunk_mode": "write_rate_throttle", "min_chunk_mib": 12,
                            "max_chunk_mib": 1024, "throttle": True},
}


def limited_by(target_mib_s: float, reached_mib_s: float, enospc: int, throttled_s: float,
               writer_mib_s: float) -> str:
    """What held a step back: ``autoextend`` (a pause: the extension came too late),
    ``throttle`` (no pause, but the throttle held the writer below its target), ``writer``
    (below the target with neither: the writer's own ceiling, ``writer_mib_s`` measured
    alone), or ``none`` (the target was reached)."""
    if enospc > 0:
        return "autoextend"
    if reached_mib_s >= REACHED * target_mib_s:
        return "none"
    if throttled_s > 0:
        return "throttle"
    return "writer" if reached_mib_s >= REACHED * writer_mib_s else "unexplained"


class StepFigures:
    """A monitor observer: the throttle's and the near-miss figures of the current step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.left: list[float] = []
        self.throttled_s = 0.0
        self.throttles = 0
        self.lowest_limit = 0

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case WatermarkLeft(fraction=fraction):
                self.left.append(fraction)
            case Throttled(bps=bps):
                self.throttles += 1
                self.lowest_limit = min(self.lowest_limit or bps, bps)
            case ThrottleLifted(seconds=seconds):
                self.throttled_s += seconds
            case _:
                pass


class Observers:
    def __init__(self, *observers: Any) -> None:
        self.observers = observers

    def notify(self, event: MonitorEvent) -> None:
        for o in self.observers:
            o.notify(event)


def _shared_rw_command(spec: VmSpec, qmp_socket: str, serial_log: str) -> list[str]:
    """The lab's QEMU command, with ``share-rw=on`` on the virtio-blk devices: the writer's
    ``qemu-io`` on the qcow2 node needs the device to share write access."""
    return [arg + ",share-rw=on" if arg.startswith("virtio-blk-pci,") else arg
            for arg in _LAB_COMMAND(spec, qmp_socket, serial_log)]


_LAB_COMMAND = labqemu.qemu_command


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def pattern(index: int) -> int:
    return index % 255 + 1


class QemuOutput:
    """What QEMU printed since the last look: HMP ``qemu-io`` prints its results on
    QEMU's stdout (the lab's ``qemu.log``), not always into the command's reply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_text(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")


async def hmp(client: Any, line: str, output: QemuOutput | None = None) -> str:
    out = str(await client.execute("human-monitor-command", {"command-line": line}))
    if output is not None:
        out += output.new_text()
    return out


class Completions:
    """``qemu-io``'s ``aio_write`` completions, as QEMU prints them on its stdout."""

    def __init__(self, output: QemuOutput) -> None:
        self.output = output
        self.partial = ""

    async def next(self, timeout: float = 120.0) -> str:
        """The next completion line (``wrote ...`` or ``aio_write failed: ...``)."""
        deadline = time.perf_counter() + timeout
        while True:
            text = self.partial + self.output.new_text()
            *lines, self.partial = text.split("\n")
            for n, line in enumerate(lines):
                if line.startswith("wrote ") or "aio_write failed" in line:
                    self.partial = "\n".join([*lines[n + 1:], self.partial])
                    return line
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no aio_write completion within {timeout} s")
            await anyio.sleep(POLL_S)


async def write_at_rate(client: Any, device: str, total: int, rate_mib_s: float | None,
                        output: QemuOutput,
                        physical: Callable[[], int] | None = None) -> dict[str, Any]:
    """Write ``total`` bytes in BLOCK-sized patterned writes paced to ``rate_mib_s`` (None:
    as fast as the writer goes) through ``device``'s BlockBackend, one at a time.

    Each write is an ``aio_write``: the monitor command returns at once and the write
    completes in QEMU's block layer, as a guest's does, so a throttled write does not hold
    QEMU's monitor (a synchronous ``write`` would, and every command of the service behind
    it). ``physical``: the volume's size now; after each block, what it holds beyond the
    data written so far is sampled (the stranded space, had the guest stopped there)."""
    blocks = total // BLOCK
    interval = BLOCK / (rate_mib_s * MiB) if rate_mib_s else 0.0
    enospc = 0
    held: list[int] = []
    done = Completions(output)
    t0 = time.perf_counter()
    for i in range(blocks):
        due = t0 + i * interval
        now = time.perf_counter()
        if due > now:
            await anyio.sleep(due - now)
        while True:
            await hmp(client,
                      f'qemu-io -d {device} "aio_write -P {pattern(i)} {i * BLOCK} {BLOCK}"')
            line = await done.next()
            if "No space left" in line:
                enospc += 1
                await anyio.sleep(0.02)
                continue
            if not line.startswith("wrote "):
                raise RuntimeError(f"qemu-io write failed: {line.strip()[:200]}")
            break
        if physical is not None:
            held.append(physical() - (i + 1) * BLOCK)
    elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {"enospc": enospc, "elapsed_s": round(elapsed, 3),
                           "rate_mib_s": round(total / MiB / elapsed, 1)}
    if held:
        out["stranded_mean_mib"] = round(sum(held) / len(held) / MiB, 1)
        out["stranded_max_mib"] = round(max(held) / MiB, 1)
    return out


async def verify(client: Any, device: str, total: int,
                 output: QemuOutput | None = None) -> int:
    """Blocks whose pattern does not read back."""
    bad = 0
    for i in range(total // BLOCK):
        out = await hmp(
            client, f'qemu-io -d {device} "read -P {pattern(i)} {i * BLOCK} {BLOCK}"', output)
        if "read " not in out or "verification failed" in out.lower():
            bad += 1
    return bad


async def highest_offset(client: Any) -> int:
    stats = await client.execute("query-blockstats", {"query-nodes": True})
    for entry in stats:
        if entry.get("node-name") == "file0":
            return int(entry["stats"]["wr_highest_offset"])
    raise RuntimeError("node file0 not in query-blockstats")


async def device_path(client: Any) -> str:
    """The virtio device's QOM path (``query-block``'s ``qdev``): ``qemu-io -d`` takes it."""
    for entry in await client.execute("query-block"):
        if entry.get("qdev"):
            return str(entry["qdev"])
    raise RuntimeError("no device in query-block")


async def _writer_vm(volumes: LoopVolumeBackend, stack: AsyncExitStack, base: Path,
                     vm_name: str, start_mib: int, watched: bool) -> tuple[VolumeRef, Any, Any]:
    """A guest-less QEMU on a fresh volume; ``watched``: with the socket the service
    watches. Returns the volume, the VM and the writer's QMP client."""
    ref, device = await create_qcow2_disk(volumes, stack, VolumeRef("wr", vm_name), start_mib,
                                          VIRTUAL_MIB)
    extra: tuple[str, ...] = ()
    if watched:
        socket = base / "qmp" / f"{vm_name}.sock"
        extra = ("-qmp", f"unix:{socket},server=on,wait=off")
    spec = VmSpec(name=vm_name, paused=True, memory_mib=64,
                  drives=(Drive.numbered(device, 0),), extra_args=extra)
    vm = await launch(spec, base / "vms" / vm_name)
    stack.push_async_callback(vm.stop)
    client = await vm.connect_qmp("writer")
    stack.push_async_callback(client.disconnect)
    return ref, vm, client


def size_of(path: str | Path) -> Callable[[], int]:
    """The file's size now, each time it is called."""
    return lambda: os.stat(path).st_size


def _loop_volumes(base: Path) -> LoopVolumeBackend:
    settings = host_settings(base, chunk_mib=16, utilization_percent=50)
    return LoopVolumeBackend(settings.volumes.loop_root, 4 * MiB, LocalAuthority())


async def writer_alone(total: int) -> dict[str, Any]:
    """The writer's own ceiling now: unpaced, on a volume that needs no extension."""
    base = Path(tempfile.mkdtemp(prefix="ae-bench-wr-", dir="/var/tmp"))
    try:
        async with AsyncExitStack() as stack:
            _, vm, client = await _writer_vm(_loop_volumes(base), stack, base, "alone",
                                             total // MiB + 64, watched=False)
            figures = await write_at_rate(client, await device_path(client), total, None,
                                          QemuOutput(vm.stderr_log))
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))
    return figures


async def one_policy(name: str, rates: list[float], total: int,
                     writer_mib_s: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="ae-bench-wr-", dir="/var/tmp"))
    steps: list[dict[str, Any]] = []
    tally = Tally()
    step = StepFigures()
    try:
        (base / "qmp").mkdir()
        settings = host_settings(base, chunk_mib=16, utilization_percent=50,
                                 extra={"policy": POLICIES[name], "qmp": {}})
        volumes = LoopVolumeBackend(settings.volumes.loop_root, 4 * MiB, LocalAuthority())
        service = Service(settings, observer=Observers(tally, step))
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            for n, rate in enumerate(rates):
                async with AsyncExitStack() as stack:
                    vm_name = f"wr{n}"
                    ref, vm, client = await _writer_vm(volumes, stack, base, vm_name,
                                                       START_MIB, watched=True)
                    armed = False
                    with anyio.move_on_after(60):
                        while not armed:
                            armed = any(d["state"] == "set"
                                        for v in service.monitor.snapshot() if v["vm"] == vm_name
                                        for d in v["drives"])
                            await anyio.sleep(0.05)
                    if not armed:
                        raise RuntimeError(f"{vm_name}: the service did not arm the drive")
                    extends0 = tally.extends
                    step.reset()
                    output = QemuOutput(vm.stderr_log)
                    device = await device_path(client)
                    figures = await write_at_rate(client, device, total, rate, output,
                                                  size_of(volumes.file_path(ref)))
                    written_end = await highest_offset(client)
                    physical = os.stat(volumes.file_path(ref)).st_size
                    chunks = service.chunks.chunks()
                    margin = service.chunks.margins().get(ref)
                    # The extension the last blocks started, and its throttle's lift.
                    with anyio.move_on_after(10):
                        while service.monitor.throttles.held:
                            await anyio.sleep(0.05)
                    bad = await verify(client, device, total, output)
                    steps.append({
                        "target_mib_s": rate, **figures,
                        "extends": tally.extends - extends0,
                        "physical_mib": round(physical / MiB, 1),
                        "written_end_mib": round(written_end / MiB, 1),
                        "stranded_mib": round((physical - written_end) / MiB, 1),
                        "chunk_in_use_mib": round(chunks.get(ref, 0) / MiB, 1),
                        "margin_at_end": margin if service.chunks.combined else None,
                        "throttles": step.throttles,
                        "throttled_s": round(step.throttled_s, 3),
                        "lowest_limit_mib_s": round(step.lowest_limit / MiB, 1),
                        "watermark_left_min": round(min(step.left), 3) if step.left else None,
                        "watermark_left_mean": round(sum(step.left) / len(step.left), 3)
                        if step.left else None,
                        "limited_by": limited_by(rate, figures["rate_mib_s"], figures["enospc"],
                                                 step.throttled_s, writer_mib_s),
                        "blocks_not_verified": bad,
                    })
            tg.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))
    clean = [s for s in steps if s["enospc"] == 0 and s["blocks_not_verified"] == 0]
    best = max(clean, key=lambda s: s["rate_mib_s"], default=None)
    return {
        "policy": POLICIES[name], "steps": steps,
        "pauses_total": sum(s["enospc"] for s in steps),
        "highest_rate_without_enospc_mib_s": best["rate_mib_s"] if best else 0.0,
        "stranded_mib_at_that_rate": best["stranded_mib"] if best else None,
        "stranded_mib_sum_over_steps": round(sum(s["stranded_mib"] for s in steps), 1),
        "stranded_mean_mib_sum_over_steps": round(
            sum(s.get("stranded_mean_mib", 0.0) for s in steps), 1),
        "extension_latency_p99_ms": round(service.chunks.latency_s() * 1000, 1)
        if POLICIES[name]["chunk_mode"] != "fixed" else None,
        "extension_latency_p99_ms_measured": round(p99(tally.latencies) * 1000, 1),
        "extension_phase_p99_ms": {
            phase: round(p99([ph[phase] for ph in tally.phases if phase in ph]) * 1000, 1)
            for phase in ("wait", "decision", "extender", "rearm", "total")},
    }


async def run(quick: bool) -> dict[str, Any]:
    logs.configure("warning", "json")
    labqemu.qemu_command = _shared_rw_command  # this process launches only the writer's QEMU
    rates = [50.0, 200.0, 800.0] if quick else [25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]
    total = (128 if quick else 512) * MiB
    out: dict[str, Any] = {"block_mib": BLOCK // MiB, "write_mib_per_step": total // MiB,
                           "start_mib": START_MIB}
    alone = await writer_alone(total)
    out["writer_alone"] = alone
    for name in POLICIES:
        out[name] = await one_policy(name, rates, total, alone["rate_mib_s"])
    out["writer_alone_after"] = await writer_alone(total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    start = loadavg()
    t0 = time.monotonic()
    result = anyio.run(run, args.quick)
    result.update(loadavg_start=start, loadavg_end=loadavg(),
                  elapsed_s=round(time.monotonic() - t0, 1), quick=args.quick,
                  when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
