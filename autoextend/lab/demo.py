"""``autoextend demo``: a real guest fills a thin volume while the real service keeps it growing.

Single host (QMP or libvirt): the guest writes ``write_mib`` (1 GiB) into a qcow2 on a loop
volume that starts at ``start_mib`` (128 MiB) with a test-sized chunk (128 MiB); the service
extends it before it fills. At the end the guest reads everything back and verifies it.

The summary (``--json``) holds at least ``extends``, ``pauses``, ``resumes``,
``data_verified``, ``vms_left_paused`` and ``latency_ms`` (p50/p99/max from the threshold
event to the re-armed threshold on the larger volume).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio

from autoextend.lab.guest import GuestJob
from autoextend.lab.singlehost import Guest, LabHost, lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.logs import get_logger
from autoextend.monitor.core import percentile
from autoextend.monitor.observer import Tally

log = get_logger("demo")
MiB = 1 << 20


@dataclass(frozen=True)
class DemoOptions:
    hosts: int = 1
    kill_spm: bool = False
    vms: int = 1
    write_mib: int = 1024
    start_mib: int = 128
    virtual_mib: int = 2048
    chunk_mib: int = 128
    utilization_percent: int = 50
    rate_kib_s: int = 0
    hypervisor: str = "qmp"
    timeout_s: float = 900.0
    progress: bool = False


def latency_ms(values: list[float]) -> dict[str, float]:
    """p50 / p99 / max of durations in seconds, as milliseconds."""
    return {
        "p50": round(percentile(values, 50) * 1000, 3),
        "p99": round(percentile(values, 99) * 1000, 3),
        "max": round(max(values, default=0.0) * 1000, 3),
    }


def summarize(
    tally: Tally, results: dict[str, Any], left_paused: int, checks_clean: bool, elapsed: float
) -> dict[str, Any]:
    verified = bool(results) and all(r is not None and r.verified for r in results.values())
    return {
        "extends": tally.extends,
        "failed_extends": tally.failed,
        "pauses": tally.enospc_pauses,
        "resumes": tally.resumes,
        "data_verified": verified,
        "vms_left_paused": left_paused,
        "image_check_clean": checks_clean,
        "latency_ms": latency_ms(tally.latencies),
        "extends_per_s": round(tally.extends / elapsed, 3) if elapsed > 0 else 0.0,
        "elapsed_s": round(elapsed, 3),
        "guests": {
            name: (
                {"verified": r.verified, "written_mib": r.written_mib, "error": r.error}
                if r is not None else {"verified": False, "error": "no result"}
            )
            for name, r in results.items()
        },
    }


async def _progress(host: LabHost, tally: Tally, out: TextIO) -> None:
    while True:
        parts = []
        for vm in host.service.monitor.snapshot():
            for d in vm["drives"]:
                paused = " PAUSED" if vm["paused"] else ""
                parts.append(
                    f"{vm['vm']}: alloc {d['allocation'] // MiB:>5} MiB"
                    f" / phys {d['physical'] // MiB:>5} MiB [{d['state']}]{paused}"
                )
        line = " | ".join(parts) or "waiting for the guest..."
        out.write(f"\r{line}  extends {tally.extends}  pauses {tally.enospc_pauses}"
                  f"  resumes {tally.resumes}\x1b[K")
        out.flush()
        await anyio.sleep(0.5)


async def _run_guests(host: LabHost, options: DemoOptions, tally: Tally) -> dict[str, Any]:
    job = GuestJob(mib=options.write_mib, rate_kib_s=options.rate_kib_s)
    guests: dict[str, Guest] = {}
    for i in range(options.vms):
        name = f"vm{i + 1}"
        guests[name] = await host.start_guest(
            name, job, start_mib=options.start_mib, virtual_mib=options.virtual_mib
        )
    results: dict[str, Any] = {name: None for name in guests}

    async def wait_one(name: str, guest: Guest) -> None:
        try:
            results[name] = await guest.vm.result(timeout=options.timeout_s)
            await guest.vm.wait_exit(timeout=60)
        except Exception as exc:  # a guest that never finishes is reported, not raised
            log.error("guest did not finish", vm=name, error=str(exc))

    async with anyio.create_task_group() as tg:
        for name, guest in guests.items():
            tg.start_soon(wait_one, name, guest)
    return results


async def run_demo(
    options: DemoOptions, out: TextIO | None = None, tally: Tally | None = None
) -> dict[str, Any]:
    """Run the demo and return its summary. Everything it creates is removed afterwards.
    ``tally``: the caller's, to read more than the summary (the benchmarks' phases)."""
    tally = tally if tally is not None else Tally()
    started = time.monotonic()
    async with lab_host(
        observer=tally,
        hypervisor=options.hypervisor,
        chunk_mib=options.chunk_mib,
        utilization_percent=options.utilization_percent,
    ) as host:
        async with anyio.create_task_group() as tg:
            if options.progress and out is not None:
                tg.start_soon(_progress, host, tally, out)
            results = await _run_guests(host, options, tally)
            tg.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        if options.progress and out is not None:
            out.write("\n")
        left_paused = sum(
            1 for g in host.guests.values() if g.vm.returncode is None
        )
        clean = True
        for guest in host.guests.values():
            if guest.vm.returncode is None:
                continue
            check = await qemu_img_check(guest.device)
            clean = clean and check.clean
        return summarize(tally, results, left_paused, clean, elapsed)


async def run_libvirt_demo(
    options: DemoOptions, out: TextIO | None = None, tally: Tally | None = None
) -> dict[str, Any]:
    """The single-host demo through libvirtd: the lab starts an isolated libvirtd, the guests
    run as libvirt domains, and the service watches them with the libvirt backend."""
    import tempfile

    import libvirt

    from autoextend.lab.domxml import guest_domain_xml
    from autoextend.lab.guest import find_result
    from autoextend.lab.libvirtd import run_libvirtd
    from autoextend.lab.singlehost import host_settings

    tally = tally if tally is not None else Tally()
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="autoextend-libvirt-", dir="/var/tmp"))
    try:
        async with run_libvirtd(base / "libvirtd") as daemon:
            settings = host_settings(
                base, hypervisor="libvirt", chunk_mib=options.chunk_mib,
                utilization_percent=options.utilization_percent,
                extra={"libvirt": {"uri": daemon.uri, "rescan_interval_s": 1.0}},
            )
            async with lab_host(settings, workdir=base, observer=tally) as host:
                conn = await anyio.to_thread.run_sync(daemon.connect)
                try:
                    job = GuestJob(mib=options.write_mib, rate_kib_s=options.rate_kib_s)
                    serials: dict[str, Path] = {}
                    devices: dict[str, str] = {}
                    for i in range(options.vms):
                        name = f"vm{i + 1}"
                        _, device = await host.create_disk(
                            f"{name}-disk", options.start_mib, options.virtual_mib)
                        serials[name] = base / f"{name}.serial"
                        devices[name] = device
                        xml = guest_domain_xml(name, host.image, [device], job, serials[name])
                        await anyio.to_thread.run_sync(conn.createXML, xml, 0)
                    results: dict[str, Any] = {}
                    left_paused = 0
                    async with anyio.create_task_group() as tg:
                        if options.progress and out is not None:
                            tg.start_soon(_progress, host, tally, out)
                        for name in serials:
                            running = await _wait_domain(conn, name, options.timeout_s)
                            text = await anyio.Path(serials[name]).read_text(errors="replace")
                            results[name] = find_result(text)
                            left_paused += int(running)
                        tg.cancel_scope.cancel()
                    if options.progress and out is not None:
                        out.write("\n")
                    clean = True
                    for device in devices.values():
                        clean = clean and (await qemu_img_check(device)).clean
                finally:
                    with anyio.CancelScope(shield=True):
                        for name in [f"vm{i + 1}" for i in range(options.vms)]:
                            try:
                                dom = await anyio.to_thread.run_sync(conn.lookupByName, name)
                                await anyio.to_thread.run_sync(dom.destroy)
                            except libvirt.libvirtError:
                                pass
                        await anyio.to_thread.run_sync(conn.close)
        summary = summarize(tally, results, left_paused, clean, time.monotonic() - started)
        summary["hypervisor"] = "libvirt"
        return summary
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))


async def _wait_domain(conn: Any, name: str, timeout_s: float) -> bool:
    """Wait for a transient domain to stop; True if it is still running at the timeout."""
    import libvirt

    with anyio.move_on_after(timeout_s):
        while True:
            try:
                dom = await anyio.to_thread.run_sync(conn.lookupByName, name)
                if not await anyio.to_thread.run_sync(dom.isActive):
                    return False
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            await anyio.sleep(0.5)
    return True


async def run_pool_demo(options: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Several host processes sharing one pool through the storage mailbox; one guest per
    host. With ``kill_spm`` the SPM host is SIGKILLed partway and restarted a second later
    (as systemd would), and the pool fails over."""
    from autoextend.lab.multihost import pool

    started = time.monotonic()
    async with pool(options.hosts, chunk_mib=options.chunk_mib) as p:
        first_spm = await p.wait_for_spm()
        log.info("SPM elected", host_id=first_spm)
        if out is not None and options.progress:
            out.write(f"{options.hosts} hosts up; host {first_spm} is SPM\n")
        job = GuestJob(mib=options.write_mib, rate_kib_s=options.rate_kib_s)
        guests = {}
        for host_id in p.hosts:
            name = f"vm{host_id}"
            guests[name] = await p.start_guest(
                host_id, name, job, start_mib=options.start_mib, virtual_mib=options.virtual_mib)
        results: dict[str, Any] = {name: None for name in guests}
        killed: list[int] = []

        async def killer() -> None:
            while _extends_logged(p) < 2 * len(guests):  # noqa: ASYNC110 (other processes' logs)
                await anyio.sleep(0.2)
            spm = await p.spm_host()
            if spm is None:
                return
            if out is not None and options.progress:
                out.write(f"\nkilling the SPM (host {spm}) with SIGKILL\n")
            await p.hosts[spm].kill()
            killed.append(spm)
            await anyio.sleep(1.0)
            await p.hosts[spm].start()
            new = await p.wait_for_spm(timeout_s=120)
            if out is not None and options.progress:
                out.write(f"host {new} is SPM now\n")

        async def progress() -> None:
            assert out is not None
            while True:
                parts = []
                spm = await p.spm_host()
                for host_id, status in (await p.statuses()).items():
                    for vm in status["vms"]:
                        for d in vm["drives"]:
                            mark = "*" if host_id == spm else " "
                            paused = " PAUSED" if vm["paused"] else ""
                            parts.append(f"{mark}host{host_id} {vm['vm']}: "
                                         f"{d['allocation'] // MiB}/{d['physical'] // MiB} MiB"
                                         f"{paused}")
                out.write("\r" + " | ".join(parts) + "  (* = SPM)\x1b[K")
                out.flush()
                await anyio.sleep(0.5)

        async def wait_one(name: str) -> None:
            try:
                results[name] = await guests[name].vm.result(timeout=options.timeout_s)
                await guests[name].vm.wait_exit(timeout=60)
            except Exception as exc:
                log.error("guest did not finish", vm=name, error=str(exc))

        async with anyio.create_task_group() as tg:
            if options.progress and out is not None:
                tg.start_soon(progress)
            if options.kill_spm:
                tg.start_soon(killer)
            async with anyio.create_task_group() as waiters:
                for name in guests:
                    waiters.start_soon(wait_one, name)
            tg.cancel_scope.cancel()
        if options.progress and out is not None:
            out.write("\n")
        elapsed = time.monotonic() - started
        tally = Tally()
        terms = 0
        for host in p.hosts.values():
            for e in host.log_events():
                event = e.get("event")
                if event == "extended" and e.get("component") == "monitor":
                    tally.extends += 1
                    tally.latencies.append(float(e.get("duration_s", 0.0)))
                elif event == "vm paused" and e.get("reason") == "enospc":
                    tally.enospc_pauses += 1
                elif event == "vm resumed":
                    tally.resumes += 1
                elif event == "this host is SPM":
                    terms += 1
        left_paused = sum(1 for g in p.guests.values() if g.vm.returncode is None)
        clean = True
        for g in p.guests.values():
            if g.vm.returncode is not None:
                clean = clean and (await qemu_img_check(g.device)).clean
        summary = summarize(tally, results, left_paused, clean, elapsed)
        summary["hosts"] = options.hosts
        summary["first_spm"] = first_spm
        summary["spm_killed"] = killed
        summary["spm_failovers"] = max(0, terms - 1)
        return summary


def _extends_logged(p: Any) -> int:
    return sum(
        1 for host in p.hosts.values() for e in host.log_events()
        if e.get("event") == "extended" and e.get("component") == "monitor"
    )


def render(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    lines = [
        f"extends: {summary['extends']} (failed {summary['failed_extends']}),"
        f" ENOSPC pauses: {summary['pauses']}, automatic resumes: {summary['resumes']}",
        f"extend latency (event -> re-armed): p50 {lat['p50']} ms, p99 {lat['p99']} ms,"
        f" max {lat['max']} ms",
        f"data verified: {'yes' if summary['data_verified'] else 'NO'},"
        f" image check clean: {'yes' if summary['image_check_clean'] else 'NO'},"
        f" VMs left paused: {summary['vms_left_paused']}",
    ]
    if "hosts" in summary:
        lines.insert(0, f"{summary['hosts']} hosts; first SPM: host {summary['first_spm']};"
                        f" SPM failovers: {summary['spm_failovers']}")
    return "\n".join(lines)


def exit_code(summary: dict[str, Any]) -> int:
    return 0 if summary["data_verified"] and summary["vms_left_paused"] == 0 else 1


def main(options: DemoOptions, as_json: bool) -> int:
    import json

    out = sys.stdout
    runner: Callable[[DemoOptions, TextIO | None], Awaitable[dict[str, Any]]]
    if options.hypervisor == "libvirt":
        runner = run_libvirt_demo
    else:
        runner = run_pool_demo if options.hosts > 1 else run_demo
    summary = anyio.run(runner, options, out)
    if as_json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(render(summary) + "\n")
    return exit_code(summary)
