"""Benchmark: how fast may a writer go without an ENOSPC, fixed chunks against write-rate chunks.

A TCG guest cannot write fast enough to find the limit, so the writer works inside QEMU's
block layer: a guest-less QEMU (``-S``) with one qcow2 drive on a thin loop volume (as the
lab's guests have), written with ``qemu-io`` through ``human-monitor-command`` on the lab's
own QMP socket while the real service watches the VM's other socket and extends the volume.
Each block is written with a pattern byte derived from its index (``write -P``) and read back
and compared at the end (``read -P``): the data is verified, not just the sizes.

For each chunk policy and each target rate (paced block by block), on a fresh volume:
the ENOSPC write failures (the writer retries the block after 20 ms, as a resumed guest
would), the rate reached, and the stranded space at the end (physical size minus the
highest written offset). The highest rate with zero ENOSPC is the figure.

    python -m bench.writerate_bench [--quick]     # JSON to bench/results/writerate.json

Lab scale: 16 MiB fixed chunks at 50 % utilization (8 MiB watermark), against write-rate
chunks from 16 MiB to 1 GiB (the same 16 MiB until a rate is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.lab import qemu as labqemu
from autoextend.lab.qemu import Drive, VmSpec, launch
from autoextend.lab.singlehost import create_qcow2_disk, host_settings
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.observer import Tally
from autoextend.service import Service
from autoextend.volumes import LocalAuthority, VolumeRef
from bench import results_file

MiB = 1 << 20
RESULTS = results_file("writerate.json")
BLOCK = 4 * MiB
START_MIB = 32
VIRTUAL_MIB = 4096

POLICIES: dict[str, dict[str, Any]] = {
    "fixed_16mib": {"chunk_mib": 16, "utilization_percent": 50, "chunk_mode": "fixed"},
    "write_rate": {"chunk_mib": 16, "utilization_percent": 50, "chunk_mode": "write_rate",
                   "min_chunk_mib": 16, "max_chunk_mib": 1024, "rate_margin": 2.0,
                   "rate_half_life_s": 30.0, "assumed_latency_s": 0.1},
}


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


async def write_at_rate(client: Any, total: int, rate_mib_s: float,
                        output: QemuOutput | None = None) -> dict[str, Any]:
    """Write ``total`` bytes in BLOCK-sized patterned writes paced to ``rate_mib_s``."""
    blocks = total // BLOCK
    interval = BLOCK / (rate_mib_s * MiB)
    enospc = 0
    t0 = time.perf_counter()
    for i in range(blocks):
        due = t0 + i * interval
        now = time.perf_counter()
        if due > now:
            await anyio.sleep(due - now)
        while True:
            out = await hmp(client, f'qemu-io fmt0 "write -P {pattern(i)} {i * BLOCK} {BLOCK}"',
                            output)
            if "No space left" in out:
                enospc += 1
                await anyio.sleep(0.02)
                continue
            if "wrote" not in out:
                raise RuntimeError(f"qemu-io write failed: {out.strip()[:200]}")
            break
    elapsed = time.perf_counter() - t0
    return {"enospc": enospc, "elapsed_s": round(elapsed, 3),
            "rate_mib_s": round(total / MiB / elapsed, 1)}


async def verify(client: Any, total: int, output: QemuOutput | None = None) -> int:
    """Blocks whose pattern does not read back."""
    bad = 0
    for i in range(total // BLOCK):
        out = await hmp(client, f'qemu-io fmt0 "read -P {pattern(i)} {i * BLOCK} {BLOCK}"',
                        output)
        if "read " not in out or "verification failed" in out.lower():
            bad += 1
    return bad


async def highest_offset(client: Any) -> int:
    stats = await client.execute("query-blockstats", {"query-nodes": True})
    for entry in stats:
        if entry.get("node-name") == "file0":
            return int(entry["stats"]["wr_highest_offset"])
    raise RuntimeError("node file0 not in query-blockstats")


async def one_policy(name: str, rates: list[float], total: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="ae-bench-wr-", dir="/var/tmp"))
    steps: list[dict[str, Any]] = []
    tally = Tally()
    try:
        (base / "qmp").mkdir()
        settings = host_settings(base, chunk_mib=16, utilization_percent=50,
                                 extra={"policy": POLICIES[name], "qmp": {}})
        volumes = LoopVolumeBackend(settings.volumes.loop_root, 4 * MiB, LocalAuthority())
        service = Service(settings, observer=tally)
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            for n, rate in enumerate(rates):
                async with AsyncExitStack() as stack:
                    ref, device = await create_qcow2_disk(
                        volumes, stack, VolumeRef("wr", f"d{n}"), START_MIB, VIRTUAL_MIB)
                    vm_name = f"wr{n}"
                    socket = base / "qmp" / f"{vm_name}.sock"
                    spec = VmSpec(name=vm_name, paused=True, memory_mib=64,
                                  drives=(Drive.numbered(device, 0),),
                                  extra_args=("-qmp", f"unix:{socket},server=on,wait=off"))
                    vm = await launch(spec, base / "vms" / vm_name)
                    stack.push_async_callback(vm.stop)
                    client = await vm.connect_qmp("writer")
                    stack.push_async_callback(client.disconnect)
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
                    output = QemuOutput(vm.stderr_log)
                    figures = await write_at_rate(client, total, rate, output)
                    written_end = await highest_offset(client)
                    physical = os.stat(volumes.file_path(ref)).st_size
                    chunks = service.chunks.chunks()
                    bad = await verify(client, total, output)
                    steps.append({
                        "target_mib_s": rate, **figures,
                        "extends": tally.extends - extends0,
                        "physical_mib": round(physical / MiB, 1),
                        "written_end_mib": round(written_end / MiB, 1),
                        "stranded_mib": round((physical - written_end) / MiB, 1),
                        "chunk_in_use_mib": round(chunks.get(ref, 0) / MiB, 1),
                        "blocks_not_verified": bad,
                    })
            tg.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))
    clean = [s for s in steps if s["enospc"] == 0 and s["blocks_not_verified"] == 0]
    best = max(clean, key=lambda s: s["rate_mib_s"], default=None)
    return {
        "policy": POLICIES[name], "steps": steps,
        "highest_rate_without_enospc_mib_s": best["rate_mib_s"] if best else 0.0,
        "stranded_mib_at_that_rate": best["stranded_mib"] if best else None,
        "stranded_mib_sum_over_steps": round(sum(s["stranded_mib"] for s in steps), 1),
        "extension_latency_p99_ms": round(service.chunks.latency_s() * 1000, 1)
        if POLICIES[name]["chunk_mode"] == "write_rate" else None,
    }


async def run(quick: bool) -> dict[str, Any]:
    logs.configure("warning", "json")
    labqemu.qemu_command = _shared_rw_command  # this process launches only the writer's QEMU
    rates = [50.0, 200.0, 800.0] if quick else [25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]
    total = (128 if quick else 512) * MiB
    out: dict[str, Any] = {"block_mib": BLOCK // MiB, "write_mib_per_step": total // MiB,
                           "start_mib": START_MIB}
    for name in POLICIES:
        out[name] = await one_policy(name, rates, total)
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
