"""Several autoextend hosts on one machine, sharing one pool, as separate processes.

Each "host" is an ``autoextend run`` process with its own config, host id, QMP socket
directory, control socket and log file. They share what real hosts share: one metadata area
(a file used with O_DIRECT, holding the leases and the mailboxes) and the volumes (loop
volumes under one root, VG ``demo``). Guests are started by the lab and attached to the host
whose QMP directory holds their service socket.

The lab itself creates the volumes (as an administrator would with lvcreate); only the SPM
extends them, through the mailbox. Each host has its own view of a volume, as each real host
has its own dm table for an LV: the guest's loop device is attached in the name of the host
that runs the guest (``[volumes] loop_host``), and only that host's refresh grows it. The
SPM's extend grows the backing file; the requesting host's refresh after the reply is what
makes its guest see the new size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from autoextend import control
from autoextend.errors import AutoextendError
from autoextend.lab import proc
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.guestimage import GuestImage, build_guest
from autoextend.lab.jsonlog import json_records
from autoextend.lab.qemu import QemuVm, guest_spec, launch
from autoextend.lab.sanlockd import SanlockDaemon, build_shim, sanlock_daemon
from autoextend.lab.singlehost import create_qcow2_disk
from autoextend.lease.config import LeaseSettings
from autoextend.logs import get_logger
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.spm.config import MailboxSettings
from autoextend.volumes import LocalAuthority, VolumeRef

log = get_logger("lab.multihost")

MiB = 1 << 20
VG = "demo"
MAX_HOSTS = 16
META_SIZE = 80 * MiB  # the journal ([mailbox] journal = "auto") ends at 77 MiB
JOURNAL_META_SIZE = 80 * MiB  # with [mailbox] journal: the journal ends at 77 MiB


# Every lease and mailbox timeout of the lab is the shipped default times this one factor, so
# the lab runs at the shipped timing *ratios* (io_timeout : watchdog : request timeout =
# 10 : 60 : 180): what a failover takes against what a request waits is what ships.
TIME_SCALE = 0.05


def scaled_timeouts(time_scale: float) -> dict[str, float]:
    """The shipped lease/mailbox timeouts, all scaled by ``time_scale``."""
    lease, mailbox = LeaseSettings(), MailboxSettings()
    return {
        "io_timeout_s": lease.io_timeout_s * time_scale,
        "watchdog_fire_timeout_s": lease.watchdog_fire_timeout_s * time_scale,
        "request_timeout_s": mailbox.request_timeout_s * time_scale,
    }


# The sanlock engine's lab timing: sanlock counts io_timeout in whole seconds and 3.8.5 fixes
# W at 60 s, so the time scale cannot apply; T = 2 s keeps the renewal the daemon reports
# (up to one renewal late) far from the 8T expiry on a loaded machine, and a request outlasts
# one failover (10T + W = 80 s).
SANLOCK_TIMEOUTS = {"io_timeout_s": 2.0, "watchdog_fire_timeout_s": 60.0,
                    "request_timeout_s": 90.0}


def host_config(
    pool_dir: Path, host_dir: Path, host_id: int, *, time_scale: float,
    chunk_mib: int, poll_interval_s: float, metrics_port: int, engine: str = "native",
    libvirt_uri: str = "",
    hot_window_s: float | None = None,
    metadata: Path | None = None,
    journal: bool = False,
    policy_extra: str = "",
    spm_priority: int | str = 50,
) -> str:
    """One host's config; with ``libvirt_uri`` its hypervisor is that libvirtd (else QMP);
    ``journal``: the SPM keeps the journal of metadata changes (``[mailbox] journal``);
    ``policy_extra``: more ``[policy]`` lines (TOML), e.g. ``throttle = false``."""
    t = SANLOCK_TIMEOUTS if engine == "sanlock" else scaled_timeouts(time_scale)
    hypervisor = "libvirt" if libvirt_uri else "qmp"
    libvirt_section = "" if not libvirt_uri else f"""
[libvirt]
uri = "{libvirt_uri}"
reconnect_interval_s = 0.2
reconnect_max_s = 1.0
rescan_interval_s = 1.0
"""
    hot = "" if hot_window_s is None else f"hot_window_s = {hot_window_s}\n"
    if journal:
        hot += "journal = true\n"
    return f"""\
[service]
hypervisor = "{hypervisor}"
extender = "mailbox"
control_socket = "{host_dir}/control.sock"

[policy]
chunk_mib = {chunk_mib}
utilization_percent = 50
extent_mib = 4
poll_interval_s = {poll_interval_s}
retry_initial_s = 0.2
retry_max_s = 2.0
{policy_extra}

[qmp]
socket_glob = "{host_dir}/qmp/*.sock"
rescan_interval_s = 0.2

[volumes]
backend = "loop"
loop_root = "{pool_dir}/volumes"
loop_extent_mib = 4
loop_host = "{host_view(host_id)}"

[lvm]
vgs = ["{VG}"]

[lease]
engine = "{engine}"
path = "{metadata or pool_dir / 'metadata'}"
host_id = {host_id}
host_name = "lab-host-{host_id}"
io_timeout_s = {t["io_timeout_s"]}
watchdog_fire_timeout_s = {t["watchdog_fire_timeout_s"]}
max_hosts = {MAX_HOSTS}
spm_priority = {json.dumps(spm_priority)}

[mailbox]
max_hosts = {MAX_HOSTS}
request_timeout_s = {t["request_timeout_s"]}
{hot}
[metrics]
enabled = true
address = "127.0.0.1"
port = {metrics_port}
{libvirt_section}"""


def host_view(host_id: int) -> str:
    """The loop view name (``[volumes] loop_host``) of lab host ``host_id``."""
    return f"lab-host-{host_id}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HostProcess:
    host_id: int
    directory: Path
    config: Path
    metrics_port: int = 0
    process: Process | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # e.g. its sanlock daemon's run dir
    # What runs it: ``python -m autoextend`` (the chaos soak's mutation check runs
    # ``sim.mutant_service``, which takes the same arguments).
    runner: tuple[str, ...] = ("-m", "autoextend")

    def scrape(self) -> dict[str, float]:
        """The host's /metrics as {series: value} (blocking: call from a worker thread)."""
        return proc.scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    @property
    def control_socket(self) -> str:
        return str(self.directory / "control.sock")

    @property
    def log_path(self) -> Path:
        return self.directory / "service.log"

    async def start(self) -> None:
        """Start ``autoextend run`` and wait until its control socket answers."""
        def open_log() -> Any:
            return open(self.log_path, "ab")

        err = await anyio.to_thread.run_sync(open_log)
        try:
            self.process = await anyio.open_process(
                [sys.executable, *self.runner, "--config", str(self.config),
                 "--log-format", "json", "--log-level", "info", "run"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                env={**os.environ, **self.env} if self.env else None,
            )
        finally:
            err.close()
        self.starts += 1
        with anyio.fail_after(60):
            while True:
                if self.process.returncode is not None:
                    raise AutoextendError(
                        f"host {self.host_id} exited at start ({self.process.returncode});"
                        f" see {self.log_path}")
                try:
                    await control.call(self.control_socket, "status", wait_s=2)
                    return
                except AutoextendError:
                    await anyio.sleep(0.1)

    async def status(self) -> dict[str, Any]:
        result = await control.call(self.control_socket, "status", wait_s=5)
        assert isinstance(result, dict)
        return result

    async def kill(self) -> None:
        """SIGKILL: the host dies without releasing anything."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await self.process.wait()

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.process is not None and self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(15):
                    await self.process.wait()
                await self.kill()

    def log_events(self) -> list[dict[str, Any]]:
        return json_records(self.log_path)

    def events(self, event: str, vm: str | None = None) -> list[dict[str, Any]]:
        """The logged records of ``event`` (of ``vm``, if given)."""
        return [e for e in self.log_events()
                if e.get("event") == event and (vm is None or e.get("vm") == vm)]

    async def vm_status(self, vm: str) -> dict[str, Any]:
        """``vm``'s entry in the host's status (empty when the host does not watch it)."""
        for v in (await self.status())["vms"]:
            if v["vm"] == vm:
                return dict(v)
        return {}


@dataclass
class PoolGuest:
    vm: QemuVm
    host_id: int
    volume: VolumeRef
    device: str


@dataclass
class Pool:
    directory: Path
    image: GuestImage
    volumes: LoopVolumeBackend
    hosts: dict[int, HostProcess] = field(default_factory=dict)
    guests: dict[str, PoolGuest] = field(default_factory=dict)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    sanlock_daemons: dict[int, SanlockDaemon] = field(default_factory=dict)
    metadata_dir: Path | None = None  # where the metadata file is (default: directory)

    @property
    def metadata(self) -> Path:
        return (self.metadata_dir or self.directory) / "metadata"

    def host_volumes(self, host_id: int) -> LoopVolumeBackend:
        """The pool's volumes as host ``host_id`` sees them: its own loop devices only."""
        return LoopVolumeBackend(self.volumes.root, self.volumes.extent_size, LocalAuthority(),
                                 host=host_view(host_id))

    async def start_guest(
        self, host_id: int, name: str, job: GuestJob, *, start_mib: int = 128,
        virtual_mib: int = 2048,
    ) -> PoolGuest:
        volume, device = await create_qcow2_disk(  # attached in the name of its host
            self.host_volumes(host_id), self.stack, VolumeRef(VG, f"{name}-disk"), start_mib,
            virtual_mib)
        return await self.launch_guest(host_id, name, job, volume, device)

    async def launch_guest(
        self, host_id: int, name: str, job: GuestJob, volume: VolumeRef, device: str, *,
        werror: str = "enospc", rerror: str = "report",
    ) -> PoolGuest:
        """Boot guest ``name`` on host ``host_id`` with its disk on ``device`` (host
        ``host_id``'s view of ``volume``, holding a qcow2 image), with that error policy."""
        host = self.hosts[host_id]
        job = await anyio.to_thread.run_sync(with_expected_md5, job)  # guest only compares
        socket = host.directory / "qmp" / f"{name}.sock"
        spec = guest_spec(name, self.image, [device], job,
                          extra_args=("-name", name, "-qmp", f"unix:{socket},server=on,wait=off"))
        if (werror, rerror) != ("enospc", "report"):
            spec = dataclasses.replace(spec, drives=tuple(
                dataclasses.replace(d, werror=werror, rerror=rerror) for d in spec.drives))
        vm = await launch(spec, self.directory / "vms" / name)
        self.stack.push_async_callback(vm.stop)
        guest = PoolGuest(vm, host_id, volume, device)
        self.guests[name] = guest
        return guest

    async def statuses(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for host_id, host in self.hosts.items():
            if host.process is None or host.process.returncode is not None:
                continue
            try:
                out[host_id] = await host.status()
            except AutoextendError:
                continue
        return out

    async def spm_host(self) -> int | None:
        """The host that says it holds the SPM lease now, if any."""
        for host_id, status in (await self.statuses()).items():
            if status.get("spm", {}).get("is_spm"):
                return host_id
        return None

    async def wait_for_spm(self, timeout_s: float = 120.0, not_host: int | None = None) -> int:
        with anyio.fail_after(timeout_s):
            while True:
                host = await self.spm_host()
                if host is not None and host != not_host:
                    return host
                await anyio.sleep(0.2)


@asynccontextmanager
async def pool(
    hosts: int = 2,
    *,
    time_scale: float = TIME_SCALE,
    chunk_mib: int = 128,
    poll_interval_s: float = 1.0,
    directory: Path | None = None,
    engine: str = "native",
    libvirt_uris: Mapping[int, str] | None = None,
    hot_window_s: float | None = None,
    runner: tuple[str, ...] = ("-m", "autoextend"),
    metadata_dir: Path | None = None,
    host_metadata: Mapping[int, Path] | None = None,
    journal: bool = False,
    policy_extra: str = "",
    spm_priorities: Mapping[int, int | str] | None = None,
) -> AsyncIterator[Pool]:
    """``hosts`` autoextend processes sharing one metadata area and one volume root, in
    ``directory`` (default: a new directory under /var/tmp, removed afterwards). With
    ``engine = "sanlock"`` each host gets its own sanlock daemon (autoextend/lab/sanlockd.py,
    in its own mount namespace) that outlives the host's process: LabError if none starts.
    ``libvirt_uris`` gives host N the libvirt hypervisor on that libvirtd (else QMP).
    ``hot_window_s``: the SPMs' ``[mailbox] hot_window_s`` (default: the shipped 60 s).
    ``runner``: what each host process runs (``HostProcess.runner``). ``metadata_dir``: where
    the metadata area file is made (default ``directory``); ``host_metadata``: the path host N
    opens it by (default the file itself), e.g. its own fault file system mount of that
    directory, so that one host's path can fail (``lab/faultfs.py``).
    ``journal``: the SPMs keep the journal (``[mailbox] journal``; a larger metadata area).
    ``policy_extra``: more ``[policy]`` lines for every host.
    ``spm_priorities``: host N's ``[lease] spm_priority`` (default 50)."""
    own_dir = directory is None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="autoextend-pool-", dir="/var/tmp"))
    try:
        image = await build_guest()
        meta = (metadata_dir or directory) / "metadata"

        def make_meta() -> None:
            with open(meta, "wb") as f:
                f.truncate(JOURNAL_META_SIZE if journal else META_SIZE)

        await anyio.to_thread.run_sync(make_meta)
        await proc.run([sys.executable, "-m", "autoextend", "lease", "init", "--path", str(meta),
                        "--max-hosts", str(MAX_HOSTS), "--engine", engine, "--yes"])
        volumes = LoopVolumeBackend(str(directory / "volumes"), 4 * MiB, LocalAuthority())
        the_pool = Pool(directory, image, volumes, metadata_dir=metadata_dir)
        async with the_pool.stack:
            daemons = the_pool.sanlock_daemons
            if engine == "sanlock":
                shim = await build_shim(directory)
                for host_id in range(1, hosts + 1):
                    daemons[host_id] = await the_pool.stack.enter_async_context(sanlock_daemon(
                        shim, host_view(host_id), directory / f"sanlock-{host_id}.log"))
            for host_id in range(1, hosts + 1):
                host_dir = directory / f"host{host_id}"
                (host_dir / "qmp").mkdir(parents=True)
                cfg = host_dir / "autoextend.toml"
                port = free_port()
                cfg.write_text(host_config(
                    directory, host_dir, host_id, time_scale=time_scale, chunk_mib=chunk_mib,
                    poll_interval_s=poll_interval_s, metrics_port=port, engine=engine,
                    libvirt_uri=(libvirt_uris or {}).get(host_id, ""),
                    hot_window_s=hot_window_s,
                    metadata=(host_metadata or {}).get(host_id), journal=journal,
                    policy_extra=policy_extra,
                    spm_priority=(spm_priorities or {}).get(host_id, 50)))
                host = HostProcess(host_id, host_dir, cfg, port, runner=runner)
                if host_id in daemons:
                    host.env = daemons[host_id].env()
                the_pool.hosts[host_id] = host
                the_pool.stack.push_async_callback(host.stop)
            for host in the_pool.hosts.values():
                await host.start()
            yield the_pool
    finally:
        if own_dir and not os.environ.get("AUTOEXTEND_KEEP_POOL"):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))


def vm_events(the_pool: Pool, host_id: int, volume: str, vm: str = "vm1"
              ) -> list[dict[str, Any]]:
    """A host's events about the volume (or its VM), and its lease and SPM events (when it
    took the SPM role: a failover's end), in log order."""
    return [e for e in the_pool.hosts[host_id].log_events()
            if e.get("volume") == volume or e.get("vm") == vm
            or e.get("component") in ("lease", "cluster")]


def timeline(events: list[dict[str, Any]]) -> str:
    """The events as one line each (time, event, the fields that tell the story): what a
    failure shows, so that a run on CI can be read without its host logs."""
    keys = ("reason", "limit_mib_s", "threshold", "physical", "allocation", "duration_s",
            "request_id", "state", "error")
    lines = []
    for e in events:
        fields = " ".join(f"{k}={e[k]}" for k in keys if k in e)
        lines.append(f"{str(e.get('timestamp', ''))[11:23]} {e.get('event')} {fields}")
    return "\n".join(lines)
