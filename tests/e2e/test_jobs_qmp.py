"""Issue 13 over QMP: block commit, block mirror, a backup (issue 29 item 4) and a live
snapshot with the real service (QMP backend, local extender, loop volumes) and a real QEMU.

The QEMU runs no guest (``-S``): writes go through the device's own BlockBackend with HMP
``qemu-io -d /machine/peripheral/vda/virtio-backend``, the path a guest's writes take, so
the job filters (``commit_top``, ``mirror_top``) see them. Data is verified afterwards with
``qemu-io -r -U ... read -P`` on the volume that ends up as the top.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab import proc
from autoextend.lab.guest import GuestJob, build_cmdline, with_expected_md5
from autoextend.lab.qemu import VmSpec, connect_qmp, run_vm
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.monitor.observer import JobFailed, MonitorEvent, Tally
from autoextend.volumes import VolumeRef
from tests.doubles import HeldExtender

pytestmark = pytest.mark.slow
MiB = 1 << 20
DEVICE = "/machine/peripheral/vda/virtio-backend"


class Recorder:
    """A tally (``counts``) that also keeps the job failures it saw."""

    def __init__(self) -> None:
        self.counts = Tally()
        self.failures: list[JobFailed] = []

    def notify(self, event: MonitorEvent) -> None:
        self.counts.notify(event)
        if isinstance(event, JobFailed):
            self.failures.append(event)


@dataclass
class Vol:
    ref: VolumeRef
    device: str


@dataclass
class Chain:
    host: LabHost
    ctl: Path
    vols: dict[str, Vol]

    async def qmp(self, command: str, args: dict[str, Any] | None = None) -> Any:
        client = await connect_qmp(str(self.ctl), "test")
        try:
            return await client.execute(command, args)
        finally:
            try:
                await client.disconnect()
            except EOFError:
                # After "quit" QEMU may close the socket before the client's own goodbye.
                if command != "quit":
                    raise

    async def write(self, pattern: int, offset_mib: int, mib: int) -> None:
        """Write through the device in 2 MiB requests, each once the top volume has 3 MiB
        free: HMP qemu-io does not pause on ENOSPC the way a guest's device does, so it
        waits as a paused guest would (the service keeps a 4 MiB watermark here)."""
        for off in range(offset_mib, offset_mib + mib, 2):
            async def room() -> bool:
                return await self.free() >= 3 * MiB
            await until(room, 60, "room in the top volume")
            await self.qmp("human-monitor-command", {
                "command-line": f'qemu-io -d {DEVICE} "write -P {pattern} {off}M 2M"'})

    async def free(self) -> int:
        """Bytes left in the top image's device: its size minus the highest written offset
        (0, to be asked again, while a job's filter comes or goes between the three reads)."""
        [block] = await self.qmp("query-block")
        root = block["inserted"]["node-name"]
        stats = await self.qmp("query-blockstats", {"query-nodes": True})
        parent = next((e["parent"] for e in stats if e.get("node-name") == root), None)
        nodes = await self.qmp("query-named-block-nodes", {"flat": True})
        path = next((n["image"]["filename"] for n in nodes
                     if parent is not None and n["node-name"] == parent["node-name"]), None)
        if parent is None or path is None:
            return 0
        sectors = await anyio.Path(f"/sys/block/{Path(path).name}/size").read_text()
        return int(sectors) * 512 - int(parent["stats"]["wr_highest_offset"])

    async def jobs(self) -> list[dict[str, Any]]:
        reply = await self.qmp("query-block-jobs")
        assert isinstance(reply, list)
        return reply

    async def wait_ready(self, job: str) -> None:
        async def ready() -> bool:
            return any(j["device"] == job and j["ready"] for j in await self.jobs())
        await until(ready, 60, f"job {job} ready")

    async def wait_gone(self, job: str) -> None:
        async def gone() -> bool:
            return not any(j["device"] == job for j in await self.jobs())
        await until(gone, 60, f"job {job} gone")

    def size(self, name: str) -> int:
        return Path(self.host.volumes.file_path(self.vols[name].ref)).stat().st_size

    def drive(self, name: str) -> dict[str, Any] | None:
        for vm in self.host.service.monitor.snapshot():
            for d in vm["drives"]:
                if d["drive"] == name:
                    return dict(d)
        return None

    async def verify(self, vol: str, checks: list[tuple[int, int, int]]) -> None:
        """``qemu-io -r -U`` reads of (pattern, offset MiB, MiB) on the volume's image."""
        for pattern, off, mib in checks:
            out = await proc.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c",
                                  f"read -P {pattern} {off}M {mib}M", self.vols[vol].device])
            assert "Pattern verification failed" not in out, (vol, pattern, off, out)


@asynccontextmanager
async def chain_vm(host: LabHost, layers: list[tuple[str, int]],
                   data: list[tuple[str, int, int, int]]) -> AsyncIterator[Chain]:
    """A guestless QEMU whose drive ``vda`` is a qcow2 chain of loop volumes.

    ``layers``: (name, start MiB), base first; ``data``: (layer, pattern, offset MiB, MiB)
    written into a layer before QEMU starts.
    """
    vols: dict[str, Vol] = {}
    below: str | None = None
    args = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "32",
            "-nodefaults", "-display", "none", "-S", "-name", "vm1"]
    for name, start in layers:
        ref, device = await host.create_disk(f"vm1-{name}", start, 256)
        if below is not None:
            await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                            vols[below].device, "-F", "qcow2", device, "256M"])
        vols[name] = Vol(ref, device)
        backing = f",backing=f{below}" if below else ""
        args += ["-blockdev", f"driver=host_device,filename={device},node-name=p{name},"
                 "cache.direct=on,aio=native",
                 "-blockdev", f"driver=qcow2,file=p{name},node-name=f{name}{backing}"]
        below = name
    for layer, pattern, off, mib in data:
        await proc.run(["qemu-io", "-f", "qcow2", "-t", "none", "-c",
                        f"write -P {pattern} {off}M {mib}M", vols[layer].device])
    ctl = host.workdir / "ctl-vm1.sock"
    args += ["-device", f"virtio-blk-pci,drive=f{below},id=vda,werror=enospc,share-rw=on",
             "-qmp", f"unix:{host.workdir / 'qmp' / 'vm1.sock'},server=on,wait=off",
             "-qmp", f"unix:{ctl},server=on,wait=off"]
    process = await anyio.open_process(args, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await until(lambda: ctl.exists() or process.returncode is not None, 20,
                    "QEMU's control socket", describe=lambda: process.returncode)
        assert process.returncode is None, "qemu exited"
        chain = Chain(host, ctl, vols)
        await until(lambda: chain.drive("vda") is not None, 30, "the service sees vda")
        yield chain
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


async def test_commit_intermediate_and_active_with_enospc(lab_tmp_path: Path) -> None:
    """40 MiB over a base on a 16 MiB volume; on-error=enospc; writes during the active
    commit; then the base is the top, monitored and extended."""
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5) as host:
        async with chain_vm(host, [("base", 16), ("mid", 64), ("top", 64)],
                            [("mid", 0x11, 0, 20), ("top", 0x22, 20, 20)]) as vm:
            held = HeldExtender(host.service.monitor.extender)
            host.service.monitor.extender = held  # so that the job runs out of space first
            await vm.qmp("block-commit", {"job-id": "c1", "device": "ftop",
                                          "top-node": "fmid", "base-node": "fbase",
                                          "on-error": "enospc"})

            async def paused() -> bool:
                return any(j["status"] == "paused" and j["io-status"] == "nospace"
                           for j in await vm.jobs())
            await until(paused, 60, "the commit paused for lack of space")
            await until(lambda: (vm.drive("vda#c1") or {}).get("job") == "commit", 30,
                        "the base monitored as the commit's target")
            held.release()
            await vm.wait_gone("c1")
            assert tally.counts.job_resumes >= 1
            assert vm.size("base") > 16 * MiB
            await vm.qmp("block-commit", {"job-id": "c2", "device": "ftop",
                                          "on-error": "enospc"})
            await vm.write(0x33, 40, 8)  # the "guest" writes while the active commit runs
            await vm.wait_ready("c2")
            await vm.qmp("job-complete", {"id": "c2"})
            await vm.wait_gone("c2")
            await until(lambda: (vm.drive("vda") or {}).get("path") == vm.vols["base"].device,
                        30, "vda is the base after the pivot")
            assert vm.drive("vda#c2") is None and vm.drive("vda#c1") is None
            pivoted = vm.size("base")
            await vm.write(0x44, 48, 16)  # past the new top's threshold
            await until(lambda: vm.size("base") > pivoted, 30, "the new top (base) extended")
            await vm.qmp("quit")
        assert tally.failures == []
        assert (await qemu_img_check(vm.vols["base"].device)).clean
        await vm.verify("base", [(0x11, 0, 20), (0x22, 20, 20), (0x33, 40, 8),
                                 (0x44, 48, 16)])


async def test_commit_with_report_and_limited_speed(lab_tmp_path: Path) -> None:
    """on-error=report (the default), speed-limited, no pre-extension: the base's threshold
    alone keeps it ahead of the commit. (An intermediate commit: an active one copies its
    first 16 MiB buffer before the speed limit applies.)"""
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5,
                        extra={"policy": {"job_pre_extend": False}}) as host:
        async with chain_vm(host, [("base", 16), ("mid", 64), ("top", 64)],
                            [("mid", 0x55, 0, 40)]) as vm:
            await vm.qmp("block-commit", {"job-id": "c1", "device": "ftop",
                                          "top-node": "fmid", "base-node": "fbase",
                                          "speed": 8 * MiB})
            await vm.wait_gone("c1")
            await vm.qmp("quit")
        assert tally.failures == []
        assert tally.counts.extends >= 2  # chunk by chunk: the threshold path, not one measured jump
        assert vm.size("base") > 40 * MiB
        assert (await qemu_img_check(vm.vols["base"].device)).clean
        await vm.verify("base", [(0x55, 0, 40)])


async def test_commit_failing_for_space_is_counted(lab_tmp_path: Path) -> None:
    """on-error=report and no room in time (the extender held): QEMU ends the job with
    ENOSPC; autoextend logs and counts it with the reason."""
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5) as host:
        async with chain_vm(host, [("base", 16), ("top", 64)], [("top", 0x56, 0, 24)]) as vm:
            host.service.monitor.extender = HeldExtender(host.service.monitor.extender)
            await vm.qmp("block-commit", {"job-id": "c1", "device": "ftop"})
            await vm.wait_gone("c1")
            await until(lambda: tally.failures != [], 30, "the failure reported")
            await vm.qmp("quit")
    [failure] = tally.failures
    assert (failure.job_id, failure.kind, failure.reason) == ("c1", "commit", "nospace")


async def test_mirror_to_small_target_then_new_top_monitored(lab_tmp_path: Path) -> None:
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5) as host:
        async with chain_vm(host, [("top", 64)], [("top", 0x66, 0, 40)]) as vm:
            ref, device = await host.create_disk("vm1-copy", 16, 256)
            vm.vols["copy"] = Vol(ref, device)
            await vm.qmp("blockdev-add", {
                "driver": "qcow2", "node-name": "fcopy",
                "file": {"driver": "host_device", "filename": device, "node-name": "pcopy",
                         "cache": {"direct": True}, "aio": "native"}})
            await vm.qmp("blockdev-mirror", {"job-id": "m1", "device": "ftop",
                                             "target": "fcopy", "sync": "full",
                                             "on-target-error": "enospc"})
            await until(lambda: vm.drive("vda#m1") is not None, 30,
                        "the mirror target monitored")
            assert (vm.drive("vda#m1") or {}).get("job") == "mirror"
            await vm.wait_ready("m1")
            await vm.qmp("job-complete", {"id": "m1"})
            await vm.wait_gone("m1")
            await until(lambda: (vm.drive("vda") or {}).get("path") == device, 30,
                        "vda is the copy after the pivot")
            pivoted = vm.size("copy")
            await vm.write(0x77, 40, 24)  # past the new top's threshold
            await until(lambda: vm.size("copy") > pivoted, 30, "the new top extended")
            await vm.qmp("quit")
        assert tally.failures == []
        assert pivoted > 16 * MiB  # the target itself was extended during the mirror
        assert (await qemu_img_check(device)).clean
        await vm.verify("copy", [(0x66, 0, 40), (0x77, 40, 24)])


async def test_snapshot_new_top_extended_old_top_never(lab_tmp_path: Path) -> None:
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5) as host:
        async with chain_vm(host, [("top", 16)], [("top", 0x12, 0, 8)]) as vm:
            await vm.write(0x13, 8, 8)  # fills the 16 MiB top: extended before the snapshot
            await until(lambda: vm.size("top") > 16 * MiB
                        and (vm.drive("vda") or {}).get("state") == "set", 30,
                        "the old top extended and re-armed")
            ref, device = await host.create_disk("vm1-snap", 16, 256)
            vm.vols["snap"] = Vol(ref, device)
            await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                            vm.vols["top"].device, "-F", "qcow2", device, "256M"])
            await vm.qmp("blockdev-add", {
                "driver": "qcow2", "node-name": "fsnap", "backing": None,
                "file": {"driver": "host_device", "filename": device, "node-name": "psnap",
                         "cache": {"direct": True}, "aio": "native"}})
            await vm.qmp("blockdev-snapshot", {"node": "ftop", "overlay": "fsnap"})
            old_size = vm.size("top")
            await vm.write(0x14, 16, 24)  # the guest goes on writing, into the new top
            await until(lambda: (vm.drive("vda") or {}).get("path") == device, 30,
                        "vda is the snapshot")
            await until(lambda: vm.size("snap") >= 24 * MiB, 30, "the new top extended")
            await vm.write(0x15, 40, 8)
            await until(lambda: vm.size("snap") >= 32 * MiB, 30, "the new top extended again")
            await vm.qmp("quit")
        assert vm.size("top") == old_size  # the old top was never extended again
        assert tally.failures == []
        assert (await qemu_img_check(device)).clean
        await vm.verify("snap", [(0x12, 0, 8), (0x13, 8, 8), (0x14, 16, 24), (0x15, 40, 8)])


async def test_active_commit_while_a_guest_writes(lab_tmp_path: Path) -> None:
    """A real guest writes 40 MiB (8 MiB/s) while its top is committed into a base on a
    16 MiB volume (on-error=enospc), pivoted with job-complete; it goes on writing into the
    base, and verifies every byte it wrote."""
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5) as host:
        base_ref, base = await host.create_disk("vm1-base", 16, 256)
        _, top = await host.create_disk("vm1-top", 64, 256)
        await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                        top, "256M"])
        job = await anyio.to_thread.run_sync(
            with_expected_md5, GuestJob(mib=40, rate_kib_s=8192, seed=31))
        extra: list[str] = []
        for name, device, backing in (("base", base, ""), ("top", top, ",backing=fbase")):
            extra += ["-blockdev", f"driver=host_device,filename={device},node-name=p{name},"
                      "cache.direct=on,aio=native",
                      "-blockdev", f"driver=qcow2,file=p{name},node-name=f{name}{backing}"]
        extra += ["-device", "virtio-blk-pci,drive=ftop,id=vda,werror=enospc,rerror=report",
                  "-name", "vm1",
                  "-qmp", f"unix:{host.workdir / 'qmp' / 'vm1.sock'},server=on,wait=off"]
        spec = VmSpec(name="vm1", guest=host.image, cmdline=build_cmdline(job),
                      extra_args=tuple(extra))
        async with run_vm(spec, host.workdir / "vms" / "vm1") as guest:
            await guest.wait_for_start(timeout=120)
            async with guest.qmp() as qmp:
                await qmp.execute("block-commit", {"job-id": "c1", "device": "ftop",
                                                   "on-error": "enospc"})
                await until(lambda: any(d["drive"] == "vda#c1" for v in
                                        host.service.monitor.snapshot() for d in v["drives"]),
                            30, "the base monitored as the commit's target")

                async def ready() -> bool:
                    jobs = await qmp.execute("query-block-jobs")
                    return any(j["device"] == "c1" and j["ready"] for j in jobs)  # type: ignore
                await until(ready, 120, "the commit ready")
                await qmp.execute("job-complete", {"id": "c1"})

                async def gone() -> bool:
                    return not await qmp.execute("query-block-jobs")
                await until(gone, 60, "the commit gone")
            result = await guest.result(timeout=300)
            assert await guest.wait_exit(timeout=60) == 0
        assert result.verified, result
        assert tally.failures == []
        assert Path(host.volumes.file_path(base_ref)).stat().st_size > 40 * MiB
        assert (await qemu_img_check(base)).clean


@pytest.mark.parametrize("on_target_error", ["enospc", "report"])
async def test_blockdev_backup_target_is_extended(lab_tmp_path: Path,
                                                  on_target_error: str) -> None:
    """``blockdev-backup`` (``sync=full``) of 40 MiB into a target on a 16 MiB volume, the
    disk overwritten during the job: the target (``vda#b1``, found through the job's
    ``target`` edge) is extended and holds the data of the backup's start.
    ``enospc``: the job pauses on the full target and is resumed after the extension.
    ``report`` (QEMU's default), speed-limited: the target's threshold alone keeps it ahead
    of the job (the first ENOSPC would end the job)."""
    tally = Recorder()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=8,
                        poll_interval_s=0.5) as host:
        async with chain_vm(host, [("top", 64)], [("top", 0x5a, 0, 40)]) as vm:
            ref, device = await host.create_disk("vm1-bak", 16, 256)
            vm.vols["bak"] = Vol(ref, device)
            await vm.qmp("blockdev-add", {
                "driver": "qcow2", "node-name": "fbak",
                "file": {"driver": "host_device", "filename": device, "node-name": "pbak",
                         "cache": {"direct": True}, "aio": "native"}})
            args: dict[str, object] = {"job-id": "b1", "device": "ftop", "target": "fbak", "sync": "full",
                    "on-target-error": on_target_error}
            if on_target_error == "report":
                args["speed"] = 16 * MiB  # 256 MiB virtual (zeros count too): ~16 s
            await vm.qmp("blockdev-backup", args)
            await until(lambda: (vm.drive("vda#b1") or {}).get("job") == "backup", 30,
                        "the backup target monitored")
            assert (vm.drive("vda#b1") or {}).get("path") == device
            await vm.write(0x5b, 0, 8)  # the "guest" overwrites while the backup runs
            await vm.wait_gone("b1")
            await until(lambda: vm.drive("vda#b1") is None, 30, "the job target dropped")
            await vm.qmp("quit")
        assert tally.failures == []
        if on_target_error == "enospc":
            assert tally.counts.job_resumes >= 1
        assert vm.size("bak") > 40 * MiB
        assert (await qemu_img_check(device)).clean
        await vm.verify("bak", [(0x5a, 0, 40)])        # the backup's point in time
        await vm.verify("top", [(0x5b, 0, 8), (0x5a, 8, 32)])
