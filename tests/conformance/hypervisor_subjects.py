"""Every Hypervisor the conformance suite runs, behind one small driver interface.

- ``fake``: :class:`~autoextend.monitor.memory.MemoryHypervisor` over in-memory volumes.
- ``qmp``: :class:`~autoextend.qmp.hypervisor.QmpHypervisor` against guestless QEMU (``-S``,
  q35, TCG) with a qcow2 drive on a loop device; one QEMU lab per test module.
- ``libvirt``: :class:`~autoextend.libvirt_backend.hypervisor.LibvirtHypervisor` against the
  session's lab libvirtd, with transient domains started paused and without a kernel (nothing
  in the guest runs, so nothing but the test changes them).

The driver does what the world around a hypervisor does: start a VM with one thin drive,
let "the guest" write (``qemu-io`` through the VM's own monitor for the real ones), grow the
volume, pause the VM as an operator would. A subject is an async context manager entered in the
test body: it runs the hypervisor in a task group there (pytest-asyncio runs a fixture's setup
and teardown in different tasks), and stops every VM it started on exit, also on failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import libvirt
import libvirt_qemu
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from autoextend.clock import MonotonicClock
from autoextend.lab import thinvol
from autoextend.lab.domxml import domain_xml
from autoextend.lab.guestimage import GuestImage
from autoextend.libvirt_backend.hypervisor import LibvirtHypervisor
from autoextend.monitor.memory import MemoryHypervisor, MemoryVolumes
from autoextend.monitor.protocols import (
    Hypervisor,
    HypervisorEvent,
    PauseReason,
    VmAppeared,
)
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import VolumeRef
from tests.libvirt_backend.harness import fast_settings as libvirt_settings
from tests.qmp.qmp_testlab import DriveSpec, Qemu, QemuLab, Volume, qemu_lab
from tests.qmp.qmp_testlab import fast_settings as qmp_settings

MiB = 1 << 20
PHYSICAL = 32 * MiB
CAPACITY = 1 << 30
EVENT_TIMEOUT_S = 30.0

Events = MemoryObjectReceiveStream[HypervisorEvent]
_names = itertools.count()


@dataclass(frozen=True)
class Expected:
    """What the hypervisor should report for a VM the driver started."""

    path: str
    volume: VolumeRef


class Driver:
    """The world around one hypervisor; subclasses implement each action for their kind."""

    kind = ""
    hypervisor: Hypervisor

    def __init__(self) -> None:
        self.events: Events | None = None

    def name(self) -> str:
        return f"conf-{self.kind}-{os.getpid()}-{next(_names)}"

    async def next_event(self, vm: str, kind: type[HypervisorEvent]) -> HypervisorEvent:
        """The next event of ``kind`` for ``vm``; others (other VMs, other kinds) skipped."""
        assert self.events is not None, "the hypervisor is not running"
        seen: list[HypervisorEvent] = []
        with anyio.move_on_after(EVENT_TIMEOUT_S):
            async for event in self.events:
                if event.vm == vm and isinstance(event, kind):
                    return event
                seen.append(event)
        raise AssertionError(f"no {kind.__name__} for {vm} within {EVENT_TIMEOUT_S} s; "
                             f"seen: {seen[-10:]}")

    async def add_vm(self, name: str) -> Expected:
        """Start a paused VM with one qcow2 drive (``PHYSICAL`` bytes, ``CAPACITY`` virtual)
        and wait until the hypervisor announced it."""
        expected = await self._start(name)
        await self.next_event(name, VmAppeared)
        return expected

    async def _start(self, name: str) -> Expected:
        raise NotImplementedError

    async def write(self, name: str, nbytes: int) -> None:
        """The guest writes ``nbytes`` at the start of its drive."""
        raise NotImplementedError

    async def grow(self, name: str, size: int) -> None:
        """The volume under the VM's drive grows to ``size`` bytes."""
        raise NotImplementedError

    async def operator_pause(self, name: str) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def serving(driver: Driver) -> AsyncIterator[Driver]:
    """Run the driver's hypervisor (in this task) until the block ends; then clean up."""
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](1000)
    try:
        with send, receive:
            async with anyio.create_task_group() as tg:
                with anyio.fail_after(EVENT_TIMEOUT_S):
                    await tg.start(driver.hypervisor.run, send)
                driver.events = receive
                try:
                    yield driver
                finally:
                    tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await driver.aclose()


# ----------------------------------------------------------------------------- fake


class FakeDriver(Driver):
    kind = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.fake = MemoryHypervisor(MemoryVolumes())
        self.hypervisor = self.fake

    async def _start(self, name: str) -> Expected:
        ref = VolumeRef("vg", name)
        self.fake.add_vm(name, {"vda": (ref, PHYSICAL, CAPACITY)})
        self.fake.pause(name, PauseReason.OTHER)  # as a VM started paused
        return Expected(self.fake.volumes.device_path(ref), ref)

    async def write(self, name: str, nbytes: int) -> None:
        self.fake.write(name, "vda", nbytes)

    async def grow(self, name: str, size: int) -> None:
        self.fake.volumes.sizes[VolumeRef("vg", name)] = size

    async def operator_pause(self, name: str) -> None:
        self.fake.pause(name, PauseReason.USER)


# ----------------------------------------------------------------------------- QMP


def _check_qemu_io(out: str) -> None:
    """HMP ``qemu-io`` prints its report to QEMU's stdout; the monitor gets errors only."""
    if out.strip() and "wrote" not in out:
        raise AssertionError(f"qemu-io failed: {out.strip()}")


def loop_lookup(path: str) -> VolumeRef | None:
    """The real backends' lookup here: a loop device is volume ``vg/loopN``."""
    return VolumeRef("vg", os.path.basename(path)) if path.startswith("/dev/loop") else None


class QmpDriver(Driver):
    kind = "qmp"

    def __init__(self, lab: QemuLab) -> None:

        super().__init__()
        self.lab = lab
        self.hypervisor = QmpHypervisor(qmp_settings(lab), loop_lookup, MonotonicClock())
        self.vms: dict[str, tuple[Qemu, Volume]] = {}

    async def _start(self, name: str) -> Expected:

        volume = await self.lab.volume(size=PHYSICAL, virtual=CAPACITY)
        qemu = await self.lab.start(name, [DriveSpec(volume, "vda")])
        self.vms[name] = (qemu, volume)
        return Expected(volume.device, VolumeRef("vg", os.path.basename(volume.device)))

    async def write(self, name: str, nbytes: int) -> None:
        qemu, _ = self.vms[name]
        out = await self.lab.qemu_io(qemu, "fmt0", f"write -P 0x5a 0 {nbytes}")
        _check_qemu_io(out)

    async def grow(self, name: str, size: int) -> None:
        await self.lab.grow(self.vms[name][1], size)

    async def operator_pause(self, name: str) -> None:
        await self.lab.control(self.vms[name][0], "stop")

    async def aclose(self) -> None:
        for qemu, _ in self.vms.values():
            await self.lab.kill(qemu, signal.SIGTERM)  # a clean exit removes its socket


# ----------------------------------------------------------------------------- libvirt


def guestless_domain_xml(name: str, device: str, workdir: Path, guest: GuestImage) -> str:
    """A lab domain (q35, TCG, the ENOSPC policy) without a kernel, its drive on SATA.

    SATA rather than virtio: HMP ``qemu-io -d <qdev id>`` needs the device that owns the
    block backend, and a virtio-blk-pci proxy does not (its inner virtio device, without an
    id, does); a write through another backend on the node would conflict with the device's
    write permission.
    """

    root = ET.fromstring(domain_xml(name, guest, [device], cmdline="",
                                    serial_log=workdir / f"{name}.serial", memory_mib=64))
    os_el = root.find("os")
    assert os_el is not None
    for tag in ("kernel", "initrd", "cmdline"):
        for element in os_el.findall(tag):
            os_el.remove(element)
    target = root.find("devices/disk/target")
    assert target is not None
    target.set("dev", "sda")
    target.set("bus", "sata")
    return ET.tostring(root, encoding="unicode")


class LibvirtDriver(Driver):
    kind = "libvirt"

    def __init__(self, uri: str, workdir: Path, guest: GuestImage) -> None:

        super().__init__()
        self.uri = uri
        self.workdir = workdir
        self.guest = guest
        self.hypervisor = LibvirtHypervisor(libvirt_settings(uri), loop_lookup, MonotonicClock())
        self.conn: Any = None
        self.vms: dict[str, thinvol.ThinVolume] = {}

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    async def _dom(self, name: str) -> Any:

        if self.conn is None:
            self.conn = await self._call(libvirt.open, self.uri)
        return await self._call(self.conn.lookupByName, name)

    async def _start(self, name: str) -> Expected:
        volume = await thinvol.create(self.workdir / f"{name}.img", PHYSICAL, CAPACITY)
        self.vms[name] = volume
        if self.conn is None:
            self.conn = await self._call(libvirt.open, self.uri)
        xml = guestless_domain_xml(name, volume.device, self.workdir, self.guest)
        await self._call(self.conn.createXML, xml, libvirt.VIR_DOMAIN_START_PAUSED)
        return Expected(volume.device, VolumeRef("vg", os.path.basename(volume.device)))

    async def write(self, name: str, nbytes: int) -> None:

        dom = await self._dom(name)
        alias = ET.fromstring(await self._call(dom.XMLDesc, 0)).find("devices/disk/alias")
        assert alias is not None, "libvirt gave the disk no alias"
        out = await self._call(
            libvirt_qemu.qemuMonitorCommand, dom,
            f'qemu-io -d {alias.get("name")} "write -P 0x5a 0 {nbytes}"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        _check_qemu_io(out)

    async def grow(self, name: str, size: int) -> None:
        await self.vms[name].grow(to=size)

    async def operator_pause(self, name: str) -> None:
        dom = await self._dom(name)
        await self._call(dom.suspend)

    async def aclose(self) -> None:
        for name, volume in self.vms.items():
            try:
                dom = await self._dom(name)
                await self._call(dom.destroy)
            except libvirt.libvirtError:
                pass  # gone already (the test killed it)
            await thinvol.remove(volume)
        if self.conn is not None:
            await self._call(self.conn.close)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def conformance_qemu_lab() -> AsyncIterator[QemuLab]:
    """One QEMU lab (socket directory, loop devices) for the module's QMP cases."""

    async with qemu_lab() as lab:
        yield lab


@pytest.fixture(params=["fake", pytest.param("qmp", marks=pytest.mark.slow),
                        pytest.param("libvirt", marks=pytest.mark.slow)])
def hypervisor_driver(request: pytest.FixtureRequest) -> Callable[[], Driver]:
    """A factory of the driver of one implementation; serve it in the test body with
    ``async with serving(hypervisor_driver()) as driver``. Only the real kinds touch QEMU
    or libvirtd (through their fixtures, requested here on demand)."""
    kind = request.param
    if kind == "fake":
        return FakeDriver
    if kind == "qmp":
        lab = request.getfixturevalue("conformance_qemu_lab")
        return lambda: QmpDriver(lab)
    daemon = request.getfixturevalue("libvirtd")
    guest = request.getfixturevalue("lab_guest")
    workdir = request.getfixturevalue("lab_dir") / "conformance-libvirt"
    workdir.mkdir(exist_ok=True)
    return lambda: LibvirtDriver(daemon.uri, workdir, guest)
