"""Harness for the libvirt backend tests: the monitor with :class:`LibvirtHypervisor`, the local
extender over loop volumes, and lab guests started as libvirt domains.

``served(...)`` is an async context manager used *inside* a test body (the monitor's task group
must live in the test's task). Everything it creates (domains, volumes, connections) is
destroyed on exit, also on failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import libvirt

from autoextend.clock import MonotonicClock
from autoextend.lab import proc
from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.guest import GuestJob, GuestResult, find_result, with_expected_md5
from autoextend.lab.guestimage import GuestImage
from autoextend.libvirt_backend.config import LibvirtSettings
from autoextend.libvirt_backend.hypervisor import LibvirtHypervisor
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.core import Monitor
from autoextend.monitor.local import LocalExtender
from autoextend.monitor.observer import (
    DriveAtCap,
    DriveGone,
    ExtendFinished,
    Fanout,
    MonitorEvent,
    Paused,
    Resumed,
    Tally,
    VgFull,
)
from autoextend.volumes import LocalAuthority, VolumeRef
from tests.doubles import HeldExtender

MiB = 1 << 20
VG = "lv"


def fast_settings(uri: str, **overrides: Any) -> LibvirtSettings:
    values: dict[str, Any] = {"uri": uri, "reconnect_interval_s": 0.2, "reconnect_max_s": 1.0,
                              "rescan_interval_s": 1.0, "call_timeout_s": 10.0}
    values.update(overrides)
    return LibvirtSettings(**values)


class History:
    """A MonitorObserver keeping what the monitor did, in order, for assertion messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case DriveGone(vm=vm, drive=drive):
                self.lines.append(f"gone {vm} {drive}")
            case DriveAtCap(vm=vm, drive=drive):
                self.lines.append(f"at-cap {vm} {drive}")
            case VgFull(vm=vm, drive=drive):
                self.lines.append(f"vg-full {vm} {drive}")
            case ExtendFinished(vm=vm, drive=drive, kind=kind, size=size):
                self.lines.append(f"extend {vm} {drive} {kind.value if kind else 'capped'} {size}")
            case Paused(vm=vm, reason=reason):
                self.lines.append(f"paused {vm} {reason.value}")
            case Resumed(vm=vm, automatic=automatic):
                self.lines.append(f"resumed {vm} automatic={automatic}")

    def __str__(self) -> str:
        return "; ".join(self.lines[-30:])


@dataclass
class Domain:
    name: str
    device: str
    volume: VolumeRef
    serial: Path


@dataclass
class Rig:
    uri: str
    workdir: Path
    guest: GuestImage
    backend: LoopVolumeBackend
    hypervisor: LibvirtHypervisor
    monitor: Monitor
    extender: HeldExtender
    tally: Tally
    history: History
    conn: Any = None  # the test's own blocking libvirt connection
    domains: list[str] = field(default_factory=list)
    volumes: list[VolumeRef] = field(default_factory=list)

    # ---------------------------------------------------------------- test-side libvirt

    async def reconnect(self) -> None:
        """Open (or re-open, after a libvirtd restart) the test's own connection."""
        old, self.conn = self.conn, await anyio.to_thread.run_sync(libvirt.open, self.uri)
        if old is not None:
            try:
                await anyio.to_thread.run_sync(old.close)
            except libvirt.libvirtError:
                pass

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    async def dom(self, name: str) -> Any:
        return await self.call(self.conn.lookupByName, name)

    async def state(self, name: str) -> tuple[int, int]:
        dom = await self.dom(name)
        state, reason = await self.call(dom.state)
        return state, reason

    # ---------------------------------------------------------------- guests

    async def disk(self, lv: str, start_mib: int, virtual_mib: int) -> tuple[VolumeRef, str]:
        volume = VolumeRef(VG, lv)
        device = await self.backend.create(volume, start_mib * MiB)
        assert device is not None
        self.volumes.append(volume)
        await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", device, f"{virtual_mib}M"])
        return volume, device

    async def start(self, name: str, job: GuestJob, *, start_mib: int = 64,
                    virtual_mib: int = 1024, paused: bool = False,
                    reuse: Domain | None = None) -> Domain:
        """Start the lab guest running ``job`` as a transient domain, on a new thin volume
        (or on the volume of ``reuse``, e.g. to verify what an earlier guest wrote)."""
        if reuse is None:
            volume, device = await self.disk(f"{name}-disk", start_mib, virtual_mib)
        else:
            volume, device = reuse.volume, reuse.device
        job = await anyio.to_thread.run_sync(with_expected_md5, job)
        serial = self.workdir / f"{name}.serial"
        xml = guest_domain_xml(name, self.guest, [device], job, serial)
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        self.domains.append(name)
        await self.call(self.conn.createXML, xml, flags)
        return Domain(name, device, volume, serial)

    async def gone(self, domain: Domain, timeout: float) -> None:
        """Wait until the (transient) domain has stopped."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    dom = await self.dom(domain.name)
                    if not await self.call(dom.isActive):
                        return
                except libvirt.libvirtError as err:
                    if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        return
                    raise
                await anyio.sleep(0.25)  # poll with a deadline (the caller's)

    async def finished(self, domain: Domain, timeout: float) -> GuestResult:
        """Wait until the domain has stopped, then read the guest's result line."""
        await self.gone(domain, timeout)
        text = await anyio.Path(domain.serial).read_text(errors="replace")
        result = find_result(text)
        assert result is not None, text[-1500:]
        return result

    # ---------------------------------------------------------------- monitor view

    def vm(self, name: str) -> dict[str, Any] | None:
        for vm in self.monitor.snapshot():
            if vm["vm"] == name:
                return vm
        return None

    def paused(self, name: str) -> str | None:
        vm = self.vm(name)
        return vm["paused"] if vm else None

    def has_drive(self, name: str) -> bool:
        vm = self.vm(name)
        return bool(vm and vm["drives"])

    async def cleanup(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.conn is not None:
                for name in self.domains:
                    try:
                        dom = await self.dom(name)
                        await self.call(dom.destroy)
                    except libvirt.libvirtError:
                        pass
                try:
                    await self.call(self.conn.close)
                except libvirt.libvirtError:
                    pass
            for volume in self.volumes:
                try:
                    await self.backend.remove(volume)
                except Exception as err:  # noqa: BLE001 - go on with the others
                    print(f"cleanup of {volume} failed: {err}")


@asynccontextmanager
async def lab_domains(
    uri: str,
    workdir: Path,
    guest: GuestImage,
    *,
    chunk_mib: int = 64,
    poll_interval_s: float = 1.0,
    full_poll_interval_s: float | None = None,
    libvirt_overrides: dict[str, Any] | None = None,
    watch_merges: bool = True,
    watch_backups: bool = True,
) -> AsyncIterator[Rig]:
    """A rig whose monitor is built but not running (see :func:`monitoring`): domains started
    now are already running when the monitor starts. ``watch_merges=False``: the libvirt
    backend does not watch a snapshot merge's base, ``watch_backups=False`` a backup's scratch
    or target (negative controls)."""
    clock = MonotonicClock()
    backend = LoopVolumeBackend(str(workdir / "volumes"), 4 * MiB, LocalAuthority())
    hypervisor = LibvirtHypervisor(fast_settings(uri, **(libvirt_overrides or {})),
                                   backend.lookup, clock, watch_merges=watch_merges,
                                   watch_backups=watch_backups)
    extender = HeldExtender(LocalExtender(backend), held=False)
    tally = Tally()
    history = History()
    policy = PolicySettings(chunk_mib=chunk_mib, utilization_percent=50, extent_mib=4,
                            poll_interval_s=poll_interval_s,
                            full_poll_interval_s=full_poll_interval_s, retry_initial_s=0.2,
                            retry_max_s=2.0)
    monitor = Monitor(hypervisor, extender, policy, clock, observer=Fanout(tally, history))
    rig = Rig(uri, workdir, guest, backend, hypervisor, monitor, extender, tally, history)
    try:
        await rig.reconnect()
        yield rig
    finally:
        await rig.cleanup()


@asynccontextmanager
async def monitoring(rig: Rig) -> AsyncIterator[Rig]:
    """Run the rig's monitor (and so the libvirt backend) for the duration of the block."""
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        try:
            yield rig
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def served(uri: str, workdir: Path, guest: GuestImage, **kwargs: Any) -> AsyncIterator[Rig]:
    """:func:`lab_domains` with the monitor running from the start."""
    async with lab_domains(uri, workdir, guest, **kwargs) as rig, monitoring(rig):
        yield rig
