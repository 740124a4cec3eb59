"""Issue 11 end to end over QMP: who resumes a paused VM, counted from QEMU's side.

The real service (QMP backend, local extender, loop volumes) and real TCG guests. Resumes
are counted on a second QMP monitor of each QEMU (the lab's own ``-qmp`` socket, not the
service's): every ``cont`` anybody sends shows there as a RESUME event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup
from qemu.qmp import QMPClient
from qemu.qmp.protocol import ConnectError
from structlog.testing import capture_logs

from autoextend.cli.service import render_status
from autoextend.lab.guest import GuestJob, build_cmdline, with_expected_md5
from autoextend.lab.qemu import QemuVm, VmSpec, launch
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.thinvol import ThinVolume
from autoextend.lab.thinvol import create as create_thin
from autoextend.lab.thinvol import remove as remove_thin
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow
MiB = 1 << 20
POLL_S = 0.2
# Time is the subject here: nothing may happen in these windows (fixed sleeps on purpose).
OBSERVE_S = 30.0  # the window, at a 0.2 s poll (150 full resyncs)
AFTER_GROW_S = 6.0  # after the drive is grown by hand: 30 more resyncs


@dataclass
class QemuEvents:
    """Events from QEMU's second QMP monitor, with their arrival times."""

    events: list[tuple[float, str]] = field(default_factory=list)
    client: QMPClient | None = None

    async def start(self) -> None:
        """Leave ``-S``: the guest starts only once this monitor listens (misses nothing).
        That start is RESUME number 1."""
        assert self.client is not None
        await self.client.execute("cont")

    def count(self, name: str) -> int:
        return sum(1 for _, e in self.events if e == name)

    def times(self, name: str) -> list[float]:
        return [t for t, e in self.events if e == name]


@asynccontextmanager
async def qemu_events(vm: QemuVm, tg: TaskGroup) -> AsyncIterator[QemuEvents]:
    seen = QemuEvents()
    ready = anyio.Event()

    async def listen() -> None:
        deadline = time.monotonic() + 30
        while True:  # the socket file may exist a moment before QEMU accepts on it
            try:
                async with vm.qmp("counter") as client:
                    with client.listener() as events:
                        seen.client = client
                        ready.set()
                        async for ev in events:
                            seen.events.append((time.monotonic(), str(ev["event"])))
                return
            except ConnectError:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.1)  # retry with a deadline until QEMU listens

    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            try:
                await listen()
            except (EOFError, OSError, anyio.EndOfStream):
                pass  # QEMU exited

    tg.start_soon(run)
    with anyio.fail_after(30):
        await ready.wait()
    try:
        yield seen
    finally:
        scope.cancel()


async def boot(host: LabHost, name: str, job: GuestJob, blockdevs: list[str]) -> QemuVm:
    job = await anyio.to_thread.run_sync(with_expected_md5, job)
    sock = host.workdir / "qmp" / f"{name}.sock"
    spec = VmSpec(name=name, guest=host.image, cmdline=build_cmdline(job), paused=True,
                  extra_args=("-name", name, "-qmp", f"unix:{sock},server=on,wait=off",
                              *blockdevs))
    vm = await launch(spec, host.workdir / "vms" / name)
    host._stack.push_async_callback(vm.stop)
    return vm


def qcow2_on(node: str, device: str, qdev: str, *, werror: str = "enospc",
             protocol: str = "host_device") -> list[str]:
    return [
        "-blockdev", f"driver={protocol},filename={device},node-name={node}-file,"
                     "cache.direct=on,aio=native",
        "-blockdev", f"driver=qcow2,file={node}-file,node-name={node}-fmt",
        "-device", f"virtio-blk-pci,drive={node}-fmt,id={qdev},werror={werror},rerror=report",
    ]


def metric(host: LabHost, name: str, labels: dict[str, str] | None = None) -> float:
    value = host.service.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


async def test_enospc_on_unmanaged_drive_is_never_resumed(lab_tmp_path: Path) -> None:
    """vda on a managed volume, vdb a qcow2 on a 16 MiB loop device outside the pool; the
    guest writes 64 MiB to vdb: paused, never resumed, also after vdb is grown by hand."""
    outside: ThinVolume = await create_thin(lab_tmp_path / "outside.img", 16 * MiB, 1 << 30)
    try:
        with capture_logs() as logs:
            async with lab_host(workdir=lab_tmp_path, poll_interval_s=POLL_S) as host, \
                    anyio.create_task_group() as tg:
                _, vda = await host.create_disk("u-vda", 64, 1024)
                vm = await boot(host, "u", GuestJob(mib=64, device="/dev/vdb"),
                                qcow2_on("a", vda, "vda") + qcow2_on("b", outside.device, "vdb"))
                async with qemu_events(vm, tg) as qemu:
                    await qemu.start()
                    await until(lambda: host.vm_status("u").get("state")
                                == "paused-enospc-unmanaged", 120, "the unmanaged pause")
                    await until(lambda: qemu.count("STOP") >= 1, 30, "QEMU's STOP event")
                    assert qemu.count("RESUME") == 1  # our start
                    await anyio.sleep(OBSERVE_S)  # observation window: nothing may happen
                    assert qemu.count("RESUME") == 1
                    status = await host.service._status({})
                    line = render_status(status)
                    assert "u  PAUSED (enospc, unmanaged vdb)" in line, line
                    assert status["service"]["unmanaged_enospc"] == 1
                    assert metric(host, "autoextend_unmanaged_enospc_total") == 1.0

                    await outside.grow(to=256 * MiB)  # grown by hand
                    await anyio.sleep(AFTER_GROW_S)  # time is the subject: still not resumed
                    assert qemu.count("RESUME") == 1
                    assert host.vm_status("u")["paused"] == "enospc, unmanaged vdb"
                    assert metric(host, "autoextend_unmanaged_enospc_total") == 1.0
                    await vm.stop()
                tg.cancel_scope.cancel()
    finally:
        await remove_thin(outside)
    warnings = [e for e in logs if e.get("log_level") == "warning"
                and "does not manage" in str(e.get("event"))]
    assert len(warnings) == 1, warnings
    assert (warnings[0]["vm"], warnings[0]["drive"], warnings[0]["path"]) == (
        "u", "vdb", outside.device)


def blkdebug_drive(image: Path, qdev: str = "vda") -> list[str]:
    """A raw drive whose first write fails once with EIO; werror=stop pauses the VM."""
    return [
        "-blockdev", f"driver=file,filename={image},node-name={qdev}-file,cache.direct=on",
        "-blockdev", f"driver=blkdebug,image={qdev}-file,node-name={qdev}-dbg,"
                     "inject-error.0.event=pwritev,inject-error.0.errno=5,"
                     "inject-error.0.once=on",
        "-blockdev", f"driver=raw,file={qdev}-dbg,node-name={qdev}-fmt",
        "-device", f"virtio-blk-pci,drive={qdev}-fmt,id={qdev},werror=stop,rerror=stop",
    ]


def make_image(path: Path, size: int = 64 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


async def test_io_error_pause_auto_leave_kill_outage(lab_tmp_path: Path) -> None:
    """Four guests, each paused by one injected EIO; the policy by per-VM overrides.

    ``kill`` and ``outage`` have storage the probe cannot read: their image file is renamed
    away after QEMU opened it (QEMU keeps its descriptor; the probe opens the path).
    """
    resume = {"policy": "leave", "overrides": [
        {"vm": "auto", "policy": "auto"},
        {"vm": "outage", "policy": "auto"},
        {"vm": "kill", "policy": "kill", "kill_after_s": 3.0},
    ]}
    names = ("auto", "leave", "kill", "outage")
    with capture_logs() as logs:
        async with lab_host(workdir=lab_tmp_path, poll_interval_s=POLL_S,
                            extra={"resume": resume}) as host, \
                anyio.create_task_group() as tg, AsyncExitStack() as stack:
            vms: dict[str, QemuVm] = {}
            qemu: dict[str, QemuEvents] = {}
            images: dict[str, Path] = {}
            for name in names:
                images[name] = await anyio.to_thread.run_sync(
                    make_image, lab_tmp_path / f"{name}.img")
                vms[name] = await boot(host, name, GuestJob(mib=16),
                                       blkdebug_drive(images[name]))
                qemu[name] = await stack.enter_async_context(qemu_events(vms[name], tg))
            await until(lambda: all(host.vm_status(n) for n in vms), 30, "the service sees all")
            for name in ("kill", "outage"):
                images[name].rename(images[name].with_suffix(".away"))  # the outage begins
            for q in qemu.values():
                await q.start()
            await until(lambda: all(q.count("STOP") for q in qemu.values()), 120,
                        "four I/O-error pauses")

            # auto: resumed once the probe passed twice; the guest's data verifies
            result = await vms["auto"].result(timeout=300)
            assert result.verified and result.written_mib == 16, result
            assert qemu["auto"].count("RESUME") == 2  # our start, then autoextend's one cont
            stop, resumed = qemu["auto"].times("STOP")[0], qemu["auto"].times("RESUME")[1]
            print(f"auto: resumed {resumed - stop:.2f} s after the pause")

            # kill: storage still unreadable; QEMU terminated after kill_after_s
            await vms["kill"].wait_exit(timeout=60)
            gone = time.monotonic()
            assert qemu["kill"].count("RESUME") == 1  # only our start
            print(f"kill: QEMU gone {gone - qemu['kill'].times('STOP')[0]:.2f} s after the pause")

            # leave and outage: still paused after the observation window
            await anyio.sleep(OBSERVE_S)
            for name in ("leave", "outage"):
                assert qemu[name].count("RESUME") == 1, name
                assert host.vm_status(name)["paused"] == "io-error", name
                assert vms[name].returncode is None, name

            # the outage ends: resumed, and the guest finishes verified
            images["outage"].with_suffix(".away").rename(images["outage"])
            back = time.monotonic()
            result = await vms["outage"].result(timeout=300)
            assert result.verified and result.written_mib == 16, result
            assert qemu["outage"].count("RESUME") == 2
            print(f"outage: resumed {qemu['outage'].times('RESUME')[1] - back:.2f} s after "
                  "the storage came back")

            assert metric(host, "autoextend_io_error_actions_total",
                          {"action": "kill", "reason": "paused on I/O error for over 3 s"}) == 1
            assert metric(host, "autoextend_io_error_actions_total",
                          {"action": "resume", "reason": "storage probe ok twice in a row"}) == 2
            assert metric(host, "autoextend_vm_pauses_total", {"reason": "io-error"}) >= 4
            status = render_status(await host.service._status({}))
            assert "leave  PAUSED (io-error)" in status, status
            tg.cancel_scope.cancel()
    kills = [e for e in logs if e.get("event") == "killing vm"]
    assert [(k["vm"], k["reason"]) for k in kills] == [
        ("kill", "paused on I/O error for over 3 s")]
    resumed_logs = [e for e in logs if e.get("event") == "vm resumed"]
    assert sorted(e["vm"] for e in resumed_logs) == ["auto", "outage"]
