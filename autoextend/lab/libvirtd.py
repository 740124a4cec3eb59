"""A private libvirtd (with its virtlogd) for lab tests, started by hand, stopped and cleaned.

Each instance runs in its own mount namespace (see :mod:`autoextend.lab.libvirtd_ns`) with its
own ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt`` and
``/var/log/libvirt`` bind-mounted from its root directory, so several instances (other
engineers' tests) run side by side. The client socket is ``ROOT/sock/libvirt-sock``; connect
with :attr:`LabLibvirtd.uri` (``qemu:///system?socket=...``).

``qemu.conf`` sets ``user``/``group`` to root: otherwise libvirt re-probes QEMU on every
domain start here (KVM absent) and each start takes about a minute.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from autoextend import logs
from autoextend.lab.errors import LibvirtdError

log = logs.get_logger("lab.libvirtd")

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0


def libvirtd_conf(root: Path, host_uuid: str) -> str:
    """libvirtd.conf: socket outside the masked paths, no auth, warnings to a file, and a host
    UUID of its own (libvirt refuses a migration between two daemons with one host UUID; the
    default comes from the machine, the same for every lab instance)."""
    return "\n".join([
        f'host_uuid = "{host_uuid}"',
        f'unix_sock_dir = "{root / "sock"}"',
        'unix_sock_group = "root"',
        'unix_sock_ro_perms = "0700"',
        'unix_sock_rw_perms = "0700"',
        'unix_sock_admin_perms = "0700"',
        'auth_unix_ro = "none"',
        'auth_unix_rw = "none"',
        f'log_outputs = "3:file:{root / "libvirtd.log"}"',
        "",
    ])


def virtlogd_conf(root: Path) -> str:
    return f'log_outputs = "3:file:{root / "virtlogd.log"}"\n'


def qemu_conf() -> str:
    """qemu.conf: run QEMU as root (a start takes seconds, not a minute), no MAC driver, no
    cgroups (two lab daemons on one machine would both name a domain's cgroup
    ``qemu-1-NAME`` in the one hierarchy; nothing in the lab needs them)."""
    return "\n".join([
        'user = "root"',
        "cgroup_controllers = [ ]",
        'group = "root"',
        'security_driver = "none"',
        "remember_owner = 0",
        "",
    ])


HOOK_SCRIPT = Path(__file__).resolve().parents[2] / "contrib" / "libvirt" / "hooks" / "qemu"
HOOK_DIR = "hook"  # under ROOT: the switch (socket), the run log (runs.log)
HOOK_TIMEOUT_S = 30.0


def hook_wrapper(root: Path) -> str:
    """``/etc/libvirt/hooks/qemu.d/autoextend`` of a lab daemon: runs the shipped hook
    (``contrib/libvirt/hooks/qemu``, unchanged) against the control socket named in
    ``ROOT/hook/socket``, and does nothing while that file is absent (the hook "off": libvirt
    looks for hooks only when it starts, and the lab daemons live for the whole session).
    Every run is logged to ``ROOT/hook/runs.log`` as ``VM OP SUB-OP RESULT``."""
    conf = root / HOOK_DIR
    program = Path(sys.executable).with_name("autoextend")
    return "\n".join([
        "#!/bin/sh",
        f"conf={shlex.quote(str(conf))}",
        'if [ ! -f "$conf/socket" ]; then echo "$1 $2 $3 off" >>"$conf/runs.log"; exit 0; fi',
        f"AUTOEXTEND={shlex.quote(str(program))}",
        'AUTOEXTEND_SOCKET=$(cat "$conf/socket")',
        f"AUTOEXTEND_HOOK_TIMEOUT={HOOK_TIMEOUT_S:g}",
        "export AUTOEXTEND AUTOEXTEND_SOCKET AUTOEXTEND_HOOK_TIMEOUT",
        f'{shlex.quote(str(HOOK_SCRIPT))} "$@"',
        "rc=$?",
        'echo "$1 $2 $3 $rc" >>"$conf/runs.log"',
        "exit $rc",
        "",
    ])


def write_hook(root: Path) -> None:
    hooks = root / "etc" / "hooks" / "qemu.d"
    hooks.mkdir(parents=True, exist_ok=True)
    (root / HOOK_DIR).mkdir(exist_ok=True)
    script = hooks / "autoextend"
    script.write_text(hook_wrapper(root))
    script.chmod(0o755)


def write_config(root: Path) -> None:
    """Lay out ROOT: etc/ with the three config files, sock/, and the mounted dirs; a new
    host UUID for each instance; the autoextend hook, off (see :func:`hook_wrapper`)."""
    for sub in ("etc", "etc/qemu", "sock", "run", "lib", "cache", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_hook(root)
    (root / "etc" / "libvirtd.conf").write_text(libvirtd_conf(root, str(uuid.uuid4())))
    (root / "etc" / "virtlogd.conf").write_text(virtlogd_conf(root))
    (root / "etc" / "qemu.conf").write_text(qemu_conf())
    (root / "etc" / "libvirt.conf").write_text("")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class LabLibvirtd:
    """A running lab libvirtd. Use :func:`run_libvirtd` (or call :meth:`stop`)."""

    root: Path
    process: Process
    start_seconds: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def pid(self) -> int:
        """The supervisor (namespace) process; libvirtd and virtlogd are its children."""
        return self.process.pid

    def log_text(self) -> str:
        try:
            return (self.root / "libvirtd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def hook_to(self, socket: str | os.PathLike[str] | None) -> None:
        """Turn the autoextend hook on (against the service listening on ``socket``) or off
        (None). Local file writes: quick enough for the loop."""
        switch = self.root / HOOK_DIR / "socket"
        if socket is None:
            switch.unlink(missing_ok=True)
        else:
            switch.write_text(f"{os.fspath(socket)}\n")

    def hook_runs(self) -> list[tuple[str, str, str, str]]:
        """The hook's runs so far: (vm, operation, sub-operation, exit code or "off")."""
        try:
            text = (self.root / HOOK_DIR / "runs.log").read_text()
        except FileNotFoundError:
            return []
        runs = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4:
                runs.append((parts[0], parts[1], parts[2], parts[3]))
        return runs

    def domain_pids(self) -> list[int]:
        """PIDs of QEMU processes this libvirtd started (from its pid files)."""
        pids = []
        for pidfile in (self.root / "run" / "qemu").glob("*.pid"):
            pid = _read_pid(pidfile)
            if pid is not None and _alive(pid):
                pids.append(pid)
        return pids

    def connect(self) -> Any:
        """A blocking ``libvirt.virConnect`` (call from a worker thread)."""
        import libvirt

        return libvirt.open(self.uri)

    async def _wait_ready(self) -> None:
        import libvirt

        with anyio.move_on_after(START_TIMEOUT_S):
            while True:
                if self.process.returncode is not None:
                    raise LibvirtdError(
                        f"lab libvirtd exited at start ({self.process.returncode})",
                        self.log_text())
                if self.socket.exists():
                    try:
                        conn = await anyio.to_thread.run_sync(self.connect)
                        try:
                            # a QEMU driver call: waits until the driver has probed QEMU
                            await anyio.to_thread.run_sync(conn.getCapabilities)
                        finally:
                            await anyio.to_thread.run_sync(conn.close)
                        return
                    except libvirt.libvirtError:
                        pass
                await anyio.sleep(0.05)
        raise LibvirtdError(f"lab libvirtd not ready after {START_TIMEOUT_S} s", self.log_text())

    async def _destroy_domains(self) -> None:
        import libvirt

        def destroy_all() -> None:
            conn = self.connect()
            try:
                for dom in conn.listAllDomains():
                    if dom.isActive():
                        dom.destroy()
                    try:
                        dom.undefine()
                    except libvirt.libvirtError:
                        pass
            finally:
                conn.close()

        try:
            await anyio.to_thread.run_sync(destroy_all)
        except libvirt.libvirtError as err:
            log.warning("could not destroy lab domains", error=str(err))

    async def stop(self) -> None:
        """Destroy its domains, stop libvirtd and virtlogd, kill any QEMU left. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                await self._destroy_domains()
            leftover_qemu = self.domain_pids()
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(STOP_GRACE_S):
                    await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            for pidfile in ("libvirtd.pid", "virtlogd.pid"):
                pid = _read_pid(self.root / pidfile)
                if pid is not None and _alive(pid):
                    leftover_qemu.append(pid)
            for pid in leftover_qemu:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log.info("lab libvirtd stopped", root=str(self.root), rc=self.process.returncode)


async def start_libvirtd(root: str | os.PathLike[str]) -> LabLibvirtd:
    """Start an isolated libvirtd + virtlogd with all state under ``root``; return when its
    QEMU driver answers (so the first domain start is as fast as the next ones).

    libvirtd re-probes QEMU at every start on this machine (``/dev/kvm`` exists but cannot run
    guests, so its cached "no KVM" never matches): that takes about 6 s and happens here, once
    per instance, not in the first test that starts a domain.

    Raises:
        LibvirtdError: it did not come up (the message carries the tail of its log).
    """
    directory = await anyio.to_thread.run_sync(Path(root).resolve)
    await anyio.to_thread.run_sync(write_config, directory)
    command = ["unshare", "--mount", "--propagation", "private",
               sys.executable, "-m", "autoextend.lab.libvirtd_ns", str(directory)]
    out = await anyio.to_thread.run_sync(lambda: open(directory / "supervisor.log", "wb"))
    try:
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=out)
    except OSError as err:
        raise LibvirtdError(f"cannot start the lab libvirtd: {err.strerror}") from err
    finally:
        out.close()
    daemon = LabLibvirtd(directory, process)
    started = anyio.current_time()
    try:
        await daemon._wait_ready()
    except BaseException:
        await daemon.stop()
        raise
    daemon.start_seconds = anyio.current_time() - started
    log.info("lab libvirtd ready", root=str(directory), pid=process.pid,
             duration_s=daemon.start_seconds)
    return daemon


@asynccontextmanager
async def run_libvirtd(root: str | os.PathLike[str]) -> AsyncIterator[LabLibvirtd]:
    """A lab libvirtd for the duration of the block; always stopped after."""
    daemon = await start_libvirtd(root)
    try:
        yield daemon
    finally:
        await daemon.stop()
