"""One autoextend host on this machine: the real service in-process, real guests, loop volumes.

Used by the demo, the end-to-end tests and the benchmarks. Everything lives under one work
directory (``/var/tmp``: O_DIRECT does not work on tmpfs): the volumes
(``volumes/<vg>/<lv>`` attached to loop devices), one QMP socket per guest for the service
(``qmp/<vm>.sock``; the lab keeps its own second socket per guest), and the control socket.
Leaving the context stops the service and every guest and removes every volume.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from autoextend import settings as settings_mod
from autoextend.checks import ALL_ON, Checks
from autoextend.lab import proc
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.guestimage import GuestImage, build_guest
from autoextend.lab.qemu import Drive, QemuVm, VmSpec, guest_spec, launch
from autoextend.logs import get_logger
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.monitor.observer import MonitorObserver
from autoextend.service import Service
from autoextend.settings import Settings
from autoextend.volumes import LocalAuthority, VolumeRef

log = get_logger("lab.singlehost")

MiB = 1 << 20
VG = "demo"


def host_settings(
    workdir: Path,
    *,
    hypervisor: str = "qmp",
    chunk_mib: int = 128,
    utilization_percent: int = 50,
    extent_mib: int = 4,
    poll_interval_s: float = 2.0,
    metrics_port: int | None = None,
    dry_run: bool = False,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Settings for a lab host whose files all live under ``workdir``."""
    data: dict[str, dict[str, Any]] = {
        "service": {
            "hypervisor": hypervisor,
            "extender": "local",
            "control_socket": str(workdir / "control.sock"),
            "dry_run": dry_run,
        },
        "policy": {
            "chunk_mib": chunk_mib,
            "utilization_percent": utilization_percent,
            "extent_mib": extent_mib,
            "poll_interval_s": poll_interval_s,
            "retry_initial_s": 0.2,
            "retry_max_s": 2.0,
        },
        "qmp": {"socket_glob": str(workdir / "qmp" / "*.sock"), "rescan_interval_s": 0.2},
        "volumes": {
            "backend": "loop",
            "loop_root": str(workdir / "volumes"),
            "loop_extent_mib": extent_mib,
        },
    }
    if metrics_port is not None:
        data["metrics"] = {"enabled": True, "address": "127.0.0.1", "port": metrics_port}
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return settings_mod.from_mapping(data, "<lab host>")


async def create_qcow2_disk(
    volumes: LoopVolumeBackend, stack: AsyncExitStack, volume: VolumeRef, start_mib: int,
    virtual_mib: int,
) -> tuple[VolumeRef, str]:
    """Create a ``start_mib`` loop volume holding a ``virtual_mib`` qcow2 image; its removal
    is registered on ``stack`` (shielded, and a failed removal does not stop the others)."""
    device = await volumes.create(volume, start_mib * MiB)
    assert device is not None

    async def remove() -> None:
        with anyio.CancelScope(shield=True):
            try:
                await volumes.remove(volume)
            except Exception as exc:  # cleanup must go on for the other volumes
                log.warning("volume cleanup failed", volume=str(volume), error=str(exc))

    stack.push_async_callback(remove)
    await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", device, f"{virtual_mib}M"])
    return volume, device


@dataclass
class Guest:
    vm: QemuVm
    volume: VolumeRef
    device: str


@dataclass
class LabHost:
    workdir: Path
    settings: Settings
    service: Service
    image: GuestImage
    volumes: LoopVolumeBackend
    guests: dict[str, Guest] = field(default_factory=dict)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    def vm_status(self, vm: str) -> dict[str, Any]:
        """``vm``'s entry in the monitor's snapshot (empty when it does not watch it)."""
        for v in self.service.monitor.snapshot():
            if v["vm"] == vm:
                return dict(v)
        return {}

    async def create_disk(self, lv: str, start_mib: int, virtual_mib: int) -> tuple[VolumeRef, str]:
        """A thin volume: a ``start_mib`` loop volume holding a ``virtual_mib`` qcow2."""
        return await create_qcow2_disk(self.volumes, self._stack, VolumeRef(VG, lv),
                                       start_mib, virtual_mib)

    async def start_guest(
        self, name: str, job: GuestJob, *, start_mib: int = 128, virtual_mib: int = 2048
    ) -> Guest:
        """Create the guest's disk and boot it; the service finds it through its socket."""
        volume, device = await self.create_disk(f"{name}-disk", start_mib, virtual_mib)
        return await self._boot(name, job, volume, device)

    async def restart_guest(self, name: str, job: GuestJob) -> Guest:
        """Boot a new QEMU for an existing guest: same disk, same service socket."""
        old = self.guests[name]
        await old.vm.stop()
        return await self._boot(name, job, old.volume, old.device)

    async def start_idle(self, name: str, *, start_mib: int = 32, virtual_mib: int = 256) -> Guest:
        """A QEMU with the disk attached but no guest running (``-S``): cheap, for scale."""
        volume, device = await self.create_disk(f"{name}-disk", start_mib, virtual_mib)
        spec = VmSpec(name=name, drives=(Drive.numbered(device, 0),), paused=True,
                      extra_args=self._service_socket_args(name))
        return await self._launch(spec, volume, device)

    def _service_socket_args(self, name: str) -> tuple[str, ...]:
        socket = self.workdir / "qmp" / f"{name}.sock"
        return ("-name", name, "-qmp", f"unix:{socket},server=on,wait=off")

    async def _boot(self, name: str, job: GuestJob, volume: VolumeRef, device: str) -> Guest:
        # The host computes the expected digest once, so the guest only reads back and
        # compares (2x faster under TCG than regenerating the pattern in the guest).
        job = await anyio.to_thread.run_sync(with_expected_md5, job)
        spec = guest_spec(name, self.image, [device], job,
                          extra_args=self._service_socket_args(name))
        return await self._launch(spec, volume, device)

    async def _launch(self, spec: VmSpec, volume: VolumeRef, device: str) -> Guest:
        name = spec.name
        vm = await launch(spec, self.workdir / "vms" / name)
        self._stack.push_async_callback(vm.stop)
        guest = Guest(vm, volume, device)
        self.guests[name] = guest
        return guest


@asynccontextmanager
async def lab_host(
    settings: Settings | None = None,
    *,
    workdir: Path | None = None,
    observer: MonitorObserver | None = None,
    checks: Checks = ALL_ON,
    **settings_kwargs: Any,
) -> AsyncIterator[LabHost]:
    """A running service on this machine, ready for guests. Cleans up everything on exit."""
    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="autoextend-", dir="/var/tmp")) if own_dir else workdir
    assert base is not None
    try:
        await anyio.to_thread.run_sync(lambda: (base / "qmp").mkdir(parents=True, exist_ok=True))
        cfg = settings or host_settings(base, **settings_kwargs)
        image = await build_guest()
        volumes = LoopVolumeBackend(
            cfg.volumes.loop_root, cfg.volumes.loop_extent_mib * MiB, LocalAuthority()
        )
        service = Service(cfg, observer=observer, checks=checks)
        host = LabHost(base, cfg, service, image, volumes)
        async with host._stack, anyio.create_task_group() as tg:
            await tg.start(service.run)
            try:
                yield host
            finally:
                tg.cancel_scope.cancel()
    finally:
        if own_dir:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(base, ignore_errors=True))


def is_tty() -> bool:
    return os.isatty(1)
