"""Live migration through libvirt in the lab: two lab libvirtd daemons on this machine, a
domain moved from one to the other with ``virDomainMigrate3`` (what ``virsh migrate --live
--migrateuri unix:///PATH`` calls), its memory over a UNIX socket.

Each lab daemon has its own host UUID and runs its domains without cgroups
(:mod:`autoextend.lab.libvirtd`), which is what lets two of them on one machine migrate to
each other. The domain's disks are the *destination host's* views of its volumes (each lab
host has its own loop devices over a volume's file, ``[volumes] loop_host``), so the
destination XML (``VIR_MIGRATE_PARAM_DEST_XML``) names other block devices than the source's;
its serial log goes to a file of its own.

``virDomainMigrate3`` blocks until the migration has ended: :func:`live_migration` runs it in
a worker thread inside a task group and yields once the source has a migration job. The
bandwidth holds the migration open (libvirt's smallest, 1 MiB/s, moves the lab guest's
256 MiB of RAM in minutes); :meth:`Migration.finish` lifts it.

:func:`two_libvirt_hosts` gives two in-process autoextend services in local mode with the
libvirt hypervisor, one per daemon, sharing one loop volume root.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.errors import VmError
from autoextend.lab.guest import GuestJob, GuestResult, find_result, with_expected_md5
from autoextend.lab.guestimage import GuestImage, build_guest
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.singlehost import LabHost, create_qcow2_disk, lab_host
from autoextend.lab.waiting import until
from autoextend.logs import get_logger
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.volumes import LocalAuthority, VolumeRef

log = get_logger("lab.libvirt_migrate")

MiB = 1 << 20
VG = "demo"
UNLIMITED_MIB_S = 1 << 20  # the bandwidth (MiB/s) when the lab lets the migration finish
START_TIMEOUT_S = 30.0


def destination_xml(xml: str, devices: Mapping[str, str], serial_log: str | Path) -> str:
    """The migratable domain ``xml`` with each block disk's source device mapped through
    ``devices`` (source host's path -> destination host's) and the serial log moved to
    ``serial_log``. A disk whose device is not in ``devices`` is an error (KeyError)."""
    dom = ET.fromstring(xml)
    for source in dom.iterfind("./devices/disk[@type='block']/source"):
        source.set("dev", devices[source.attrib["dev"]])
    for source in dom.iterfind("./devices/serial[@type='file']/source"):
        source.set("path", str(serial_log))
    return ET.tostring(dom, encoding="unicode")


@dataclass
class Migration:
    """One ``virDomainMigrate3`` call in progress (see :func:`live_migration`)."""

    domain: Any  # the source's virDomain
    uri: str
    started_at: float = 0.0
    ended_at: float | None = None
    error: str | None = None
    _done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def ended(self) -> bool:
        return self._done.is_set()

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    async def _run(self, destination: Any, params: dict[str, Any], flags: int,
                   *, task_status: TaskStatus[None]) -> None:
        import libvirt

        async def migrate() -> None:
            try:
                await anyio.to_thread.run_sync(self.domain.migrate3, destination, params, flags)
            except libvirt.libvirtError as err:
                self.error = str(err)
            finally:
                self.ended_at = anyio.current_time()
                self._done.set()
                log.info("migration ended", uri=self.uri, error=self.error,
                         duration_s=self.duration_s)

        async with anyio.create_task_group() as tg:
            self.started_at = anyio.current_time()
            tg.start_soon(migrate)
            await until(self._running_or_ended, START_TIMEOUT_S, "the source's migration job")
            task_status.started()

    async def _running_or_ended(self) -> bool:
        """No event marks the start of a migration out: poll libvirt's job."""
        import libvirt

        if self.ended:
            return True
        try:
            stats = await anyio.to_thread.run_sync(self.domain.jobStats)
        except libvirt.libvirtError:
            return False
        return bool(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)
                    in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED))

    async def finish(self, timeout: float = 120.0) -> str | None:  # noqa: ASYNC109
        """Lift the bandwidth limit and wait for the end; returns the error (None: done)."""
        import libvirt

        if not self.ended:
            try:
                await anyio.to_thread.run_sync(self.domain.migrateSetMaxSpeed, UNLIMITED_MIB_S)
            except libvirt.libvirtError:
                if not self.ended:
                    raise
        return await self.wait_ended(timeout)

    async def wait_ended(self, timeout: float = 120.0) -> str | None:  # noqa: ASYNC109
        with anyio.move_on_after(timeout):
            await self._done.wait()
            return self.error
        raise VmError(str(self.domain.name()), f"migration still running after {timeout} s")

    async def _abort(self) -> None:
        import libvirt

        with anyio.CancelScope(shield=True):
            if not self.ended:
                try:
                    await anyio.to_thread.run_sync(self.domain.abortJob)
                except libvirt.libvirtError:
                    pass
            await self._done.wait()


@asynccontextmanager
async def live_migration(
    source: Any, destination: Any, name: str, *, devices: Mapping[str, str],
    serial_log: str | Path, socket_path: Path, bandwidth_mib_s: int = 1,
) -> AsyncIterator[Migration]:
    """Migrate domain ``name`` live from connection ``source`` to ``destination`` over the
    UNIX socket ``socket_path`` at ``bandwidth_mib_s``; yields once the source's migration
    job runs. Leaving the block aborts a migration still running and waits for its end."""
    import libvirt

    domain = await anyio.to_thread.run_sync(source.lookupByName, name)
    xml = await anyio.to_thread.run_sync(domain.XMLDesc, libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    uri = f"unix://{socket_path}"
    params = {
        libvirt.VIR_MIGRATE_PARAM_URI: uri,
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: destination_xml(xml, devices, serial_log),
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: bandwidth_mib_s,
    }
    migration = Migration(domain, uri)
    async with anyio.create_task_group() as tg:
        await tg.start(migration._run, destination, params, libvirt.VIR_MIGRATE_LIVE)
        log.info("migration started", vm=name, uri=uri, bandwidth_mib_s=bandwidth_mib_s)
        try:
            yield migration
        finally:
            await migration._abort()


# ------------------------------------------------------------------ two local hosts


@dataclass
class LabDomain:
    name: str
    host: str
    volume: VolumeRef
    device: str
    serial: Path

    def serial_text(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def result(self) -> GuestResult | None:
        return find_result(self.serial_text())


@dataclass
class LibvirtLab:
    """Two autoextend hosts (libvirt hypervisor, local extender) on one machine, each with
    its own lab libvirtd and its own loop views of one volume root."""

    directory: Path
    image: GuestImage
    hosts: dict[str, LabHost]
    daemons: dict[str, LabLibvirtd]
    conns: dict[str, Any] = field(default_factory=dict)  # the lab's own connections
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    def views(self, host: str) -> LoopVolumeBackend:
        """The pool's volumes as ``host`` sees them (its own loop devices)."""
        cfg = self.hosts[host].settings.volumes
        return LoopVolumeBackend(cfg.loop_root, cfg.loop_extent_mib * MiB, LocalAuthority(),
                                 host=cfg.loop_host)

    async def start_guest(self, host: str, name: str, job: GuestJob, *, start_mib: int,
                          virtual_mib: int = 1024) -> LabDomain:
        """Create the guest's volume (attached in ``host``'s view) and start it as a
        transient domain of ``host``'s libvirtd."""
        volume, device = await create_qcow2_disk(
            self.views(host), self.stack, VolumeRef(VG, f"{name}-disk"), start_mib, virtual_mib)
        job = await anyio.to_thread.run_sync(with_expected_md5, job)
        serial = self.directory / f"{name}-{host}.serial"
        xml = guest_domain_xml(name, self.image, [device], job, serial)
        self.stack.push_async_callback(self.destroy, name)
        await anyio.to_thread.run_sync(self.conns[host].createXML, xml, 0)
        return LabDomain(name, host, volume, device, serial)

    async def destroy(self, name: str) -> None:
        """Destroy ``name`` wherever it runs (shielded; for cleanup)."""
        import libvirt

        def destroy_everywhere() -> None:
            for conn in self.conns.values():
                try:
                    conn.lookupByName(name).destroy()
                except libvirt.libvirtError:
                    pass

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(destroy_everywhere)

    async def state(self, host: str, name: str) -> tuple[int, int] | None:
        """``dom.state()`` on ``host``, None when the domain is not there."""
        import libvirt

        def state() -> tuple[int, int] | None:
            try:
                s = self.conns[host].lookupByName(name).state()
            except libvirt.libvirtError:
                return None
            return int(s[0]), int(s[1])

        return await anyio.to_thread.run_sync(state)


@asynccontextmanager
async def two_libvirt_hosts(
    directory: Path, daemons: tuple[LabLibvirtd, LabLibvirtd], *,
    names: tuple[str, str] = ("src", "dst"), **settings: Any,
) -> AsyncIterator[LibvirtLab]:
    """Two local-mode autoextend services (in this process) with the libvirt hypervisor, the
    first on ``daemons[0]``, the second on ``daemons[1]``. ``settings`` go to
    :func:`~autoextend.lab.singlehost.host_settings` (chunk, poll ...)."""
    import libvirt

    image = await build_guest()
    root = directory / "volumes"
    async with AsyncExitStack() as outer:
        hosts: dict[str, LabHost] = {}
        by_name = dict(zip(names, daemons, strict=True))
        conns: dict[str, Any] = {}
        for name, daemon in by_name.items():
            extra = {
                "volumes": {"loop_root": str(root), "loop_host": name},
                "libvirt": {"uri": daemon.uri, "reconnect_interval_s": 0.2,
                            "reconnect_max_s": 1.0, "rescan_interval_s": 1.0},
            }
            hosts[name] = await outer.enter_async_context(lab_host(
                workdir=directory / name, hypervisor="libvirt", extra=extra, **settings))
            conns[name] = await anyio.to_thread.run_sync(libvirt.open, daemon.uri)
            outer.push_async_callback(anyio.to_thread.run_sync, conns[name].close)
        lab = LibvirtLab(directory, image, hosts, by_name, conns)
        async with lab.stack:  # domains and volumes go before the services
            yield lab
