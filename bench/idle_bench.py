"""Benchmark: what 1,000 monitored drives cost the service when nothing happens.

50 guest-less QEMU instances (``-S``: no guest code runs) x 20 qcow2 drives, each on its own
thin loop volume, watched by the real service over QMP with the default ``[policy]`` and
``[qmp]`` intervals. Once every drive is armed, the service idles for ``--window`` seconds:

- CPU: the process's user + system time over the window (the benchmark's own task only
  sleeps meanwhile), as % of one core;
- resident memory (VmRSS) at the end;
- QMP commands per second (counted at ``QmpConnection.execute``), ``lseek`` size reads
  per second, and the worker-thread hops they take (one per VM look).

    python -m bench.idle_bench [--vms 50] [--drives 20] [--window 30]

Results go to ``bench/results/idle.json`` (merged by scale: ``qmp_50x20``...).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.config import Settings
from autoextend.lab.qemu import Drive, VmSpec, launch
from autoextend.lab.singlehost import create_qcow2_disk, host_settings
from autoextend.lab.waiting import until
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.qemuimg import Measure
from autoextend.qmp import connection, session
from autoextend.service import Service
from autoextend.volumes import LocalAuthority, VolumeRef
from bench import results_file

MiB = 1 << 20
RESULTS = results_file("idle.json")
#: What Calls counts beside QMP commands: size reads, and the worker-thread hops they take.
LOCAL = ("lseek", "size hops")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Calls:
    """Counts QMP commands and device size reads (wraps the two entry points)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._execute = connection.QmpConnection.execute
        self._size = session.VmSession.__init__

    def install(self) -> None:
        counts, execute = self.counts, self._execute

        async def counted(self: Any, command: str, arguments: Any = None) -> object:
            counts[command] += 1
            return await execute(self, command, arguments)

        connection.QmpConnection.execute = counted  # type: ignore[method-assign]
        init = self._size

        def init_counted(self: session.VmSession, name: str, conn: connection.QmpConnection,
                         device_sizes: session.DeviceSizes,
                         measure: Measure | None = None) -> None:
            async def sized(paths: Sequence[str]) -> list[int | None]:
                counts["lseek"] += len(paths)
                counts["size hops"] += 1
                return await device_sizes(paths)

            init(self, name, conn, sized, measure)

        session.VmSession.__init__ = init_counted  # type: ignore[method-assign]

    def uninstall(self) -> None:
        connection.QmpConnection.execute = self._execute  # type: ignore[method-assign]
        session.VmSession.__init__ = self._size  # type: ignore[method-assign]


CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    # This build's defaults.
    "default": {},
    # The build before: every poll looked at every VM, each VM's drive list every rescan.
    "every_poll_full": {"policy": {"full_poll_interval_s": 2.0},
                        "qmp": {"drive_watch_interval_s": 1.0}},
}


async def measure(settings: Settings, vms: int, drives: int, window_s: float,
                  warmup_s: float, calls: Calls) -> dict[str, Any]:
    """Run the service on the VMs already up; measure it once every drive is armed."""
    service = Service(settings)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)

        def armed() -> int:
            return sum(1 for vm in service.monitor.snapshot()
                       for d in vm["drives"] if d["state"] == "set")

        await until(lambda: armed() == vms * drives, timeout=300,
                    what=f"all {vms * drives} drives armed",
                    describe=lambda: f"{armed()} armed")
        await anyio.sleep(warmup_s)
        calls.counts.clear()
        rss0 = rss_mib()
        c0, t0 = cpu_s(), time.monotonic()
        await anyio.sleep(window_s)
        cpu, elapsed = cpu_s() - c0, time.monotonic() - t0
        counts = dict(calls.counts)
        result = {
            "drives": armed(), "window_s": round(elapsed, 1),
            "cpu_percent_of_core": round(100 * cpu / elapsed, 2),
            "rss_mib": rss_mib(), "rss_mib_at_window_start": rss0,
            "qmp_calls_per_s": round(sum(v for k, v in counts.items() if k not in LOCAL)
                                     / elapsed, 2),
            "qmp_calls_by_command_per_s": {k: round(v / elapsed, 2)
                                           for k, v in sorted(counts.items()) if k not in LOCAL},
            "size_reads_per_s": round(counts.get("lseek", 0) / elapsed, 2),
            "size_read_hops_per_s": round(counts.get("size hops", 0) / elapsed, 2),
            "settings": {"poll_interval_s": settings.policy.poll_interval_s,
                         "full_poll_interval_s": settings.policy.full_poll_interval_s,
                         "qmp_rescan_interval_s": settings.qmp.rescan_interval_s,
                         "qmp_drive_watch_s": settings.qmp.drive_watch_s},
        }
        tg.cancel_scope.cancel()
    return result


async def idle_qmp(vms: int, drives: int, window_s: float, warmup_s: float,
                   configs: list[str]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="ae-bench-idle-", dir="/var/tmp"))
    calls = Calls()
    calls.install()
    used: list[str] = []
    try:
        (base / "qmp").mkdir()
        plain = host_settings(base, chunk_mib=8, extra={"qmp": {"rescan_interval_s": 1.0}})
        volumes = LoopVolumeBackend(plain.volumes.loop_root, 4 * MiB, LocalAuthority())
        results: dict[str, Any] = {"vms": vms, "drives_per_vm": drives}
        async with AsyncExitStack() as stack:
            limiter = anyio.CapacityLimiter(8)
            devices: dict[str, list[str]] = {f"idle{v}": [""] * drives for v in range(vms)}

            async def disk(vm: str, i: int) -> None:
                async with limiter:
                    _, device = await create_qcow2_disk(
                        volumes, stack, VolumeRef("idle", f"{vm}-d{i}"), 16, 256)
                devices[vm][i] = device

            t0 = time.monotonic()
            async with anyio.create_task_group() as tg:
                for name in devices:
                    for i in range(drives):
                        tg.start_soon(disk, name, i)
            results["setup_disks_s"] = round(time.monotonic() - t0, 1)
            for name, devs in devices.items():
                socket = base / "qmp" / f"{name}.sock"
                spec = VmSpec(name=name, paused=True, memory_mib=64,
                              drives=tuple(Drive.numbered(d, i) for i, d in enumerate(devs)),
                              extra_args=("-qmp", f"unix:{socket},server=on,wait=off"))
                vm = await launch(spec, base / "vms" / name)
                stack.push_async_callback(vm.stop)
            for config in configs:
                extra = {"qmp": {"rescan_interval_s": 1.0}}
                for section, values in CONFIGS[config].items():
                    extra.setdefault(section, {}).update(values)
                settings = host_settings(base, chunk_mib=8, extra=extra)
                results[config] = await measure(settings, vms, drives, window_s, warmup_s,
                                                calls)
            used = [d for devs in devices.values() for d in devs if d]
    finally:
        calls.uninstall()
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))
    await anyio.to_thread.run_sync(remove_loop_nodes, used)
    return results


LOOP_CTL_REMOVE = 0x4C81  # <linux/loop.h>


def remove_loop_nodes(devices: list[str]) -> None:
    """Remove the (detached) loop device nodes this run made: a thousand idle /dev/loopN
    left behind make every sysfs scan of loop devices on the machine slower."""
    fd = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for device in devices:
            number = int(device.removeprefix("/dev/loop"))
            if os.path.exists(f"/sys/block/loop{number}/loop/backing_file"):
                continue  # attached again meanwhile (not ours any more)
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, LOOP_CTL_REMOVE, number)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--drives", type=int, default=20)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append",
                        help="service configurations to measure, one after the other "
                             "(default: all)")
    args = parser.parse_args()
    logs.configure("warning", "json")
    start = loadavg()
    figures = anyio.run(idle_qmp, args.vms, args.drives, args.window, args.warmup,
                        args.config or list(CONFIGS))
    figures.update(loadavg_start=start, loadavg_end=loadavg(),
                   when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    results: dict[str, Any] = {"benchmark": "idle"}
    if RESULTS.exists():
        try:
            results = json.loads(RESULTS.read_text())
        except ValueError:
            pass
    results[f"qmp_{args.vms}x{args.drives}"] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
