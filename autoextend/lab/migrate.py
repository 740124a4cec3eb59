"""Live migration in the lab: QEMU to QEMU over a UNIX socket on this machine.

The lab plays the management layer (what libvirt does for vdsm): it starts the destination
QEMU with the same guest and ``-incoming defer``, its drives on the *destination host's* loop
devices (each host has its own view of a volume, ``[volumes] loop_host``), turns on the
``events`` migration capability on both sides, then ``migrate-incoming`` on the destination
and ``migrate`` on the source, both on one UNIX socket. ``max-bandwidth`` stretches the
migration (so that extensions fall inside it); :meth:`Migration.finish` lifts it.

The QMP management protocol (docs/migration.md), which the chaos soak follows: the destination
QEMU is started with ``-S`` (``autostart=False``: it does not run on arrival, as libvirt
starts it) and with the ``late-block-activate`` migration capability (as libvirt sets it on
its destinations: QEMU activates the drives' nodes, and so takes their devices' length, at
``cont`` rather than when the migration completes), and after the switchover
:func:`switch_over` prepares the destination host's views (``autoextend volume prepare
--direct``, which needs no service: :func:`prepare_direct`) and only then resumes the
destination (``cont``). Without the capability QEMU keeps the length the stale view had at
the completion, however the view grows after, and reads zeros past it: the chaos soak's lost
L2 table (issue 31; ``tests/e2e/test_migration_node_length.py``). Without the protocol
(``autostart=True``, the default here, which the older tests keep as the management that
follows no protocol) the destination runs at the switchover on whatever view its host has
then.

:func:`two_local_hosts` gives two in-process autoextend services in local (single-writer)
mode sharing one loop volume root, each with its own QMP socket directory and its own loop
views; the multihost lab (``lab/multihost.py``) gives mailbox-mode hosts as processes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from autoextend.checks import ALL_ON, Checks
from autoextend.lab.errors import VmError
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.guestimage import GuestImage, build_guest
from autoextend.lab.qemu import QemuVm, guest_spec, launch
from autoextend.lab.singlehost import LabHost, create_qcow2_disk, lab_host
from autoextend.logs import get_logger
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.volumes import LocalAuthority, VolumeRef

log = get_logger("lab.migrate")

MiB = 1 << 20
VG = "demo"
UNLIMITED_BPS = 1 << 40  # max-bandwidth when the lab lets the migration finish
ENDED = frozenset({"completed", "failed", "cancelled"})


def service_socket_args(name: str, qmp_dir: Path) -> tuple[str, ...]:
    """The VM's name and the QMP socket the host's autoextend finds it by."""
    socket = qmp_dir / f"{name}.sock"
    return ("-name", name, "-qmp", f"unix:{socket},server=on,wait=off")


async def _execute(vm: QemuVm, command: str, arguments: dict[str, Any] | None = None) -> Any:
    async with vm.qmp("lab-migrate") as client:
        return await client.execute(command, arguments)


async def start_destination(
    source: QemuVm, devices: Sequence[str], workdir: Path, qmp_dir: Path, *,
    autostart: bool = True, late_block_activate: bool | None = None,
) -> QemuVm:
    """A QEMU for ``source``'s guest, waiting for an incoming migration (``-incoming
    defer``), its drives on ``devices`` (the destination host's views), its service socket
    in ``qmp_dir`` (the destination host's). ``autostart=False``: with ``-S``, it stays
    paused after the switchover until the management's ``cont`` (:func:`switch_over`).
    ``late_block_activate``: the migration capability of that name, set before
    ``migrate-incoming``: the drives' nodes are activated at ``cont``, not when the
    migration completes. By default on with ``-S`` (the protocol: the views are prepared
    after the switchover, before ``cont``, and QEMU must take their length *after* the
    prepare: :func:`node_length`), off without (QEMU then runs the guest at the switchover,
    activating the nodes first); a test passes it to show QEMU's behaviour either way."""
    if len(devices) != len(source.spec.drives):
        raise ValueError("one destination device per source drive")
    drives = tuple(dataclasses.replace(d, device=dev)
                   for d, dev in zip(source.spec.drives, devices, strict=True))
    held = () if autostart else ("-S",)
    spec = dataclasses.replace(
        source.spec, drives=drives,
        extra_args=(*service_socket_args(source.name, qmp_dir), "-incoming", "defer", *held))
    vm = await launch(spec, workdir)
    if late_block_activate is None:
        late_block_activate = not autostart
    if late_block_activate:
        try:
            await _execute(vm, "migrate-set-capabilities", {"capabilities": [
                {"capability": "late-block-activate", "state": True}]})
        except BaseException:
            await vm.stop()
            raise
    return vm


async def has_late_block_activate(vm: QemuVm) -> bool:
    """Whether ``vm`` has the ``late-block-activate`` migration capability on."""
    caps = await _execute(vm, "query-migrate-capabilities")
    return any(isinstance(c, dict) and c.get("capability") == "late-block-activate"
               and c.get("state") is True for c in caps if isinstance(caps, list))


async def node_length(vm: QemuVm, node: str) -> int | None:
    """The length QEMU has for block node ``node`` (``query-named-block-nodes``:
    ``image.virtual-size``), or None if it reports no such node.

    For a ``host_device`` node QEMU 7.2 caches that length: it is read when the node is
    opened and when it is activated (an incoming migration's nodes are opened inactive and
    activated when the migration completes, or at ``cont`` with ``late-block-activate``),
    raised by a write past it, never by a read, a grown device or a ``cont`` of an active
    node. A read past it returns zeros (``tests/e2e/test_migration_node_length.py``)."""
    nodes = await _execute(vm, "query-named-block-nodes", {"flat": True})
    for entry in nodes if isinstance(nodes, list) else ():
        if isinstance(entry, dict) and entry.get("node-name") == node:
            image = entry.get("image")
            size = image.get("virtual-size") if isinstance(image, dict) else None
            return size if isinstance(size, int) else None
    return None


@dataclass
class Migration:
    source: QemuVm
    destination: QemuVm
    uri: str
    started_at: float = 0.0
    ended_at: float | None = None
    status: str = ""

    async def query(self) -> dict[str, Any]:
        """The source's ``query-migrate``."""
        reply = await _execute(self.source, "query-migrate")
        assert isinstance(reply, dict)
        self.status = str(reply.get("status", ""))
        if self.status in ENDED and self.ended_at is None:
            self.ended_at = anyio.current_time()
        return reply

    async def set_bandwidth(self, bytes_per_s: int) -> None:
        await _execute(self.source, "migrate-set-parameters", {"max-bandwidth": bytes_per_s})

    async def wait_ended(self, timeout: float = 60.0) -> str:  # noqa: ASYNC109
        """Poll the source until the migration completed, failed or was cancelled."""
        with anyio.move_on_after(timeout):
            while (await self.query()).get("status") not in ENDED:  # noqa: ASYNC110 (QEMU's state)
                await anyio.sleep(0.05)
            return self.status
        raise VmError(self.source.name, f"migration still {self.status!r} after {timeout} s")

    async def finish(self, timeout: float = 60.0) -> str:  # noqa: ASYNC109
        """Lift the bandwidth limit and wait for the end; returns the final status."""
        await self.set_bandwidth(UNLIMITED_BPS)
        return await self.wait_ended(timeout)

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


async def start_migration(
    source: QemuVm, destination: QemuVm, socket_path: Path, *, max_bandwidth: int
) -> Migration:
    """``migrate-incoming`` on the destination, then ``migrate`` on the source, over the
    UNIX socket ``socket_path``, at most ``max_bandwidth`` bytes/s."""
    uri = f"unix:{socket_path}"
    events = {"capabilities": [{"capability": "events", "state": True}]}
    await _execute(destination, "migrate-set-capabilities", events)
    await _execute(destination, "migrate-incoming", {"uri": uri})
    await _execute(source, "migrate-set-capabilities", events)
    await _execute(source, "migrate-set-parameters", {"max-bandwidth": max_bandwidth})
    migration = Migration(source, destination, uri, started_at=anyio.current_time())
    await _execute(source, "migrate", {"uri": uri})
    log.info("migration started", vm=source.name, uri=uri, max_bandwidth=max_bandwidth)
    return migration


# ------------------------------------------------------------------ the QMP protocol


async def prepare_direct(config: Path, volumes: Sequence[VolumeRef]) -> str:
    """``autoextend volume prepare --direct`` with a host's config: that host's views of
    ``volumes`` refreshed to their metadata size, whatever its service's state (down,
    frozen). Returns the JSON it printed.

    Raises:
        VmError: the command failed (the management must not resume the guest then).
    """
    done = await anyio.run_process(
        [sys.executable, "-m", "autoextend", "--config", str(config), "volume", "prepare",
         "--direct", "--json", *(str(v) for v in volumes)], check=False)
    if done.returncode != 0:
        raise VmError(",".join(str(v) for v in volumes),
                      f"volume prepare --direct failed ({done.returncode}): "
                      f"{done.stderr.decode(errors='replace').strip()[-500:]}")
    return done.stdout.decode(errors="replace")


async def arrived_state(destination: QemuVm, timeout: float = 60.0) -> str:  # noqa: ASYNC109
    """The destination's run state once the incoming migration has been loaded there (no
    longer ``inmigrate``): ``paused`` (held by ``-S``; the source ran at the switchover),
    ``running`` (no ``-S``), or the source's pause (``io-error``: the source was paused for
    lack of space, which the destination's autoextend resumes once its drives have room)."""
    with anyio.move_on_after(timeout):
        while True:
            status = str((await _execute(destination, "query-status")).get("status", ""))
            if status != "inmigrate":
                return status
            await anyio.sleep(0.05)  # time is the subject: QEMU loading the last pass
    raise VmError(destination.name, f"still inmigrate {timeout} s after the switchover")


async def switch_over(
    migration: Migration, prepare: Callable[[], Awaitable[object]],
    check: Callable[[], Awaitable[None]] | None = None, timeout: float = 60.0,  # noqa: ASYNC109
) -> str:
    """The end of a QMP migration under the protocol: lift the bandwidth limit and wait for
    the end; if it completed (the source is stopped: nothing more is written there), wait
    for the destination to load it, ``prepare`` the destination's views, run ``check``
    (the lab's invariant, right before the guest may run there), then ``cont`` the
    destination if ``-S`` held it. Returns the migration's final status.

    A ``prepare`` that raises leaves the destination paused (the exception propagates):
    a guest never runs on a view that may be smaller than what it wrote."""
    status = await migration.finish(timeout)
    if status != "completed":
        return status
    arrived = await arrived_state(migration.destination, timeout)
    await prepare()
    if check is not None:
        await check()
    if arrived == "paused":
        await _execute(migration.destination, "cont")
        log.info("destination resumed after its views were prepared",
                 vm=migration.destination.name)
    return status


# ------------------------------------------------------------------ two local hosts


@dataclass
class MigrationLab:
    """Two autoextend hosts on one machine sharing one loop volume root."""

    directory: Path
    image: GuestImage
    hosts: dict[str, LabHost]
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    def views(self, host: str) -> LoopVolumeBackend:
        """The pool's volumes as ``host`` sees them (its own loop devices)."""
        cfg = self.hosts[host].settings.volumes
        return LoopVolumeBackend(cfg.loop_root, cfg.loop_extent_mib * MiB, LocalAuthority(),
                                 host=cfg.loop_host)

    def qmp_dir(self, host: str) -> Path:
        return self.hosts[host].workdir / "qmp"

    async def start_guest(
        self, host: str, name: str, job: GuestJob, *, start_mib: int, virtual_mib: int = 1024,
    ) -> tuple[QemuVm, VolumeRef, str]:
        """Create the guest's volume (attached in ``host``'s view) and boot it there."""
        volume, device = await create_qcow2_disk(
            self.views(host), self.stack, VolumeRef(VG, f"{name}-disk"), start_mib, virtual_mib)
        job = await anyio.to_thread.run_sync(with_expected_md5, job)
        spec = guest_spec(name, self.image, [device], job,
                          extra_args=service_socket_args(name, self.qmp_dir(host)))
        vm = await launch(spec, self.directory / "vms" / f"{name}-{host}")
        self.stack.push_async_callback(vm.stop)
        return vm, volume, device

    async def destination(self, host: str, source: QemuVm, volume: VolumeRef, *,
                          autostart: bool = True) -> QemuVm:
        """``source``'s guest waiting for its migration on ``host`` (own view attached);
        ``autostart=False``: held by ``-S`` after the switchover (:func:`switch_over`)."""
        device = await self.views(host).attach(volume)
        vm = await start_destination(source, [device], self.directory / "vms" /
                                     f"{source.name}-{host}", self.qmp_dir(host),
                                     autostart=autostart)
        self.stack.push_async_callback(vm.stop)
        return vm

    def volumes_config(self, host: str) -> Path:
        """A config naming only ``host``'s volume backend (what ``volume prepare --direct``
        needs); written once."""
        cfg = self.hosts[host].settings.volumes
        path = self.directory / f"{host}-volumes.toml"
        if not path.exists():
            path.write_text(
                "[volumes]\nbackend = \"loop\"\n"
                f"loop_root = \"{cfg.loop_root}\"\nloop_host = \"{cfg.loop_host}\"\n"
                f"loop_extent_mib = {cfg.loop_extent_mib}\n")
        return path


@asynccontextmanager
async def two_local_hosts(
    directory: Path, *, names: tuple[str, str] = ("src", "dst"), checks: Checks = ALL_ON,
    **settings: Any,
) -> AsyncIterator[MigrationLab]:
    """Two local-mode autoextend services (in this process) for migrations between them.

    ``settings`` go to :func:`~autoextend.lab.singlehost.host_settings` (chunk, poll ...);
    ``checks`` to both services (a negative control turns one off, ``autoextend/checks.py``).
    """
    image = await build_guest()
    root = directory / "volumes"
    extra = settings.pop("extra", {})
    async with AsyncExitStack() as outer:
        hosts: dict[str, LabHost] = {}
        for name in names:
            sections = {**extra, "volumes": {**extra.get("volumes", {}),
                                             "loop_root": str(root), "loop_host": name}}
            hosts[name] = await outer.enter_async_context(
                lab_host(workdir=directory / name, extra=sections, checks=checks,
                         **settings))
        lab = MigrationLab(directory, image, hosts)
        async with lab.stack:  # guests and volumes go before the services
            yield lab
