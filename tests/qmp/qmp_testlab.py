"""Real QEMU processes and loop-device volumes for the QMP backend tests.

``async with qemu_lab() as lab:`` gives a short private directory (unix socket paths must
stay under 108 bytes), starts ``qemu-system-x86_64 -machine q35 -S`` instances with qcow2
drives on loop devices, and on exit kills every QEMU it started and detaches every loop
device it attached, also when the test failed.

Each QEMU gets two QMP sockets: ``qmp/<name>.sock`` (matched by the backend's glob) and
``ctl/<name>.sock`` for the test to drive it, because a QMP socket serves one client at a
time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.memory import MemoryObjectReceiveStream

from autoextend.lab.qemu import connect_qmp
from autoextend.monitor.protocols import HypervisorEvent
from autoextend.qmp.config import QmpSettings
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import VolumeRef

MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Volume:
    image: Path
    device: str  # /dev/loopN


@dataclass
class DriveSpec:
    volume: Volume
    id: str
    fmt: str = "qcow2"
    read_only: bool = False


@dataclass
class Qemu:
    name: str
    socket: Path
    control: Path
    args: list[str]
    process: Process | None = None
    drives: list[DriveSpec] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class QemuLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.qmp_dir = root / "qmp"
        self.ctl_dir = root / "ctl"
        self.qmp_dir.mkdir()
        self.ctl_dir.mkdir()
        self.glob = str(self.qmp_dir / "*.sock")
        self._volumes: list[Volume] = []
        self._qemus: list[Qemu] = []

    # ------------------------------------------------------------- volumes

    async def volume(self, size: int = 64 * MiB, virtual: int = GiB, fmt: str = "qcow2") -> Volume:
        image = self.root / f"vol{len(self._volumes)}.img"
        await anyio.run_process(["truncate", "-s", str(size), str(image)])
        result = await anyio.run_process(["losetup", "-f", "--show", str(image)])
        volume = Volume(image, result.stdout.decode().strip())
        self._volumes.append(volume)
        if fmt == "qcow2":
            await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", volume.device,
                                     str(virtual)])
        return volume

    async def grow(self, volume: Volume, size: int) -> None:
        await anyio.run_process(["truncate", "-s", str(size), str(volume.image)])
        await anyio.run_process(["losetup", "-c", volume.device])

    # ------------------------------------------------------------- QEMU

    def command(self, name: str, drives: Sequence[DriveSpec], *, with_name: bool,
                scsi: bool, extra: Sequence[str] = ()) -> list[str]:
        args = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "32",
            "-nodefaults", "-display", "none", "-S",
            "-qmp", f"unix:{self.qmp_dir / name}.sock,server=on,wait=off",
            "-qmp", f"unix:{self.ctl_dir / name}.sock,server=on,wait=off",
        ]
        if with_name:
            args += ["-name", name]
        if scsi:
            args += ["-device", "virtio-scsi-pci,id=scsi0"]
        for i, d in enumerate(drives):
            ro = ",read-only=on" if d.read_only else ""
            args += ["-blockdev", f"driver=host_device,filename={d.volume.device},"
                     f"node-name=prot{i},cache.direct=on,aio=native{ro}"]
            args += ["-blockdev", f"driver={d.fmt},file=prot{i},node-name=fmt{i}{ro}"]
            # share-rw lets the test write through HMP qemu-io next to the device.
            args += ["-device", f"virtio-blk-pci,drive=fmt{i},id={d.id},werror=enospc,"
                     "share-rw=on"]
        return args + list(extra)

    async def start(self, name: str, drives: Sequence[DriveSpec] = (), *, with_name: bool = True,
                    scsi: bool = False, extra: Sequence[str] = ()) -> Qemu:
        qemu = Qemu(name, self.qmp_dir / f"{name}.sock", self.ctl_dir / f"{name}.sock",
                    self.command(name, drives, with_name=with_name, scsi=scsi, extra=extra),
                    drives=list(drives))
        self._qemus.append(qemu)
        await self.launch(qemu)
        return qemu

    async def start_custom(self, name: str, args: Sequence[str]) -> Qemu:
        """Start ``qemu-system-x86_64 <args>`` plus this lab's two QMP sockets."""
        qemu = Qemu(name, self.qmp_dir / f"{name}.sock", self.ctl_dir / f"{name}.sock", [
            "qemu-system-x86_64", *args,
            "-qmp", f"unix:{self.qmp_dir / name}.sock,server=on,wait=off",
            "-qmp", f"unix:{self.ctl_dir / name}.sock,server=on,wait=off",
        ])
        self._qemus.append(qemu)
        await self.launch(qemu)
        return qemu

    async def launch(self, qemu: Qemu) -> None:
        """(Re)start ``qemu`` and wait until both its sockets exist."""
        qemu.process = await anyio.open_process(
            qemu.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with anyio.fail_after(20):
            while not (qemu.socket.exists() and qemu.control.exists()):
                if qemu.process.returncode is not None:
                    raise RuntimeError(f"qemu {qemu.name} exited: {qemu.process.returncode}")
                await anyio.sleep(0.02)  # poll with a deadline for QEMU's sockets

    async def kill(self, qemu: Qemu, sig: signal.Signals = signal.SIGKILL) -> None:
        if qemu.process is None or qemu.process.returncode is not None:
            return
        qemu.process.send_signal(sig)
        with anyio.fail_after(20):
            await qemu.process.wait()

    async def control(self, qemu: Qemu, command: str,
                      arguments: Mapping[str, object] | None = None) -> object:
        """Run one command on the test's own monitor of ``qemu``."""
        client = await connect_qmp(str(qemu.control), f"ctl-{qemu.name}")
        try:
            return await client.execute(command, arguments)
        finally:
            await client.disconnect()

    async def qemu_io(self, qemu: Qemu, node: str, io: str) -> str:
        out = await self.control(qemu, "human-monitor-command",
                                 {"command-line": f'qemu-io {node} "{io}"'})
        assert isinstance(out, str)
        return out

    # ------------------------------------------------------------- cleanup

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for qemu in self._qemus:
                if qemu.process is not None and qemu.process.returncode is None:
                    if qemu.process.returncode is None:
                        try:
                            os.kill(qemu.pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                    await self.kill(qemu)
            for volume in self._volumes:
                await anyio.run_process(["losetup", "-d", volume.device], check=False)


Events = MemoryObjectReceiveStream[HypervisorEvent]


def fast_settings(lab: QemuLab, **overrides: Any) -> QmpSettings:
    values: dict[str, Any] = dict(
        socket_glob=lab.glob, rescan_interval_s=0.2, connect_timeout_s=3.0,
        command_timeout_s=5.0, reconnect_initial_s=0.1, reconnect_max_s=0.5,
    )
    values.update(overrides)
    return QmpSettings(**values)


class Lookup:
    def __init__(self, lab: QemuLab) -> None:
        self.lab = lab

    def __call__(self, path: str) -> VolumeRef | None:
        return VolumeRef("vg", os.path.basename(path)) if path.startswith("/dev/loop") else None


@asynccontextmanager
async def running(hv: QmpHypervisor, size: int = 1000) -> AsyncIterator[Events]:
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](size)
    with send, receive:
        async with anyio.create_task_group() as tg:
            await tg.start(hv.run, send)
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()


async def wait_for(
    events: Events, match: Callable[[HypervisorEvent], bool], timeout: float = 20.0
) -> HypervisorEvent:
    with anyio.fail_after(timeout):
        async for event in events:
            if match(event):
                return event
    raise AssertionError("event stream closed")


def drained(events: Events) -> list[HypervisorEvent]:
    out: list[HypervisorEvent] = []
    while True:
        try:
            out.append(events.receive_nowait())
        except anyio.WouldBlock:
            return out


@asynccontextmanager
async def qemu_lab() -> AsyncIterator[QemuLab]:
    root = Path(tempfile.mkdtemp(prefix="aeq-", dir="/tmp"))
    lab = QemuLab(root)
    try:
        yield lab
    finally:
        await lab.aclose()
        shutil.rmtree(root, ignore_errors=True)
