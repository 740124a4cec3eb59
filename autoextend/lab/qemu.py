"""Launch lab QEMU processes: TCG guests with direct kernel boot, or guest-less instances.

Each drive is a ``host_device`` protocol node (the loop device, ``cache.direct=on``,
``aio=native``) under a ``qcow2`` format node, attached as ``virtio-blk-pci`` with
``werror=enospc,rerror=report``, the way a production VM on a thin LV is set up. Each
instance has a QMP unix socket (``server=on,wait=off``) and its serial console in a file.

:func:`run_vm` is the async context manager tests use: the process is terminated, waited for
and killed if need be on exit, also on failure and cancellation.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from anyio.abc import Process
from qemu.qmp import QMPClient
from qemu.qmp.protocol import ConnectError
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from autoextend import logs
from autoextend.lab.errors import VmError
from autoextend.lab.guest import (
    RESULT_MARKER,
    START_MARKER,
    GuestJob,
    GuestResult,
    build_cmdline,
    parse_result,
)
from autoextend.lab.guestimage import GuestImage

log = logs.get_logger("lab.qemu")

QEMU_BINARY = "qemu-system-x86_64"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; keep a margin
_SAFE_RE = re.compile(r"[A-Za-z0-9_.+/-]+\Z")  # no commas: QEMU option syntax


@dataclass(frozen=True)
class Drive:
    """One qcow2-on-block-device drive. ``node_name`` is the host_device (protocol) node,
    whose write threshold tracks physical allocation; ``format_node`` is the qcow2 node."""

    device: str
    node_name: str = "file0"
    format_node: str = "fmt0"
    qdev_id: str = "vda"
    fmt: str = "qcow2"  # or "raw"
    werror: str = "enospc"
    rerror: str = "report"

    @classmethod
    def numbered(cls, device: str, index: int, **kwargs: str) -> Drive:
        """Drive ``index`` of a VM: nodes ``file<i>``/``fmt<i>``, qdev id ``vda``, ``vdb``..."""
        if not 0 <= index < 26:
            raise ValueError("drive index must be in 0..25")
        return cls(device, f"file{index}", f"fmt{index}", "vd" + chr(ord("a") + index), **kwargs)


@dataclass(frozen=True)
class VmSpec:
    """What to run. ``guest=None`` runs no kernel (a QEMU for QMP/scale tests, usually with
    ``paused=True``). ``machine="none"`` also has no PCI bus, so its drives are block nodes
    only (no qdev device, no werror policy)."""

    name: str
    drives: tuple[Drive, ...] = ()
    guest: GuestImage | None = None
    cmdline: str = ""
    machine: str = "q35"
    memory_mib: int = 256
    smp: int = 1
    paused: bool = False
    extra_args: tuple[str, ...] = ()


def guest_spec(name: str, guest: GuestImage, devices: list[str] | tuple[str, ...],
               job: GuestJob, **kwargs: object) -> VmSpec:
    """A VM that boots the lab guest with ``job`` on drives ``devices`` (vda, vdb, ...)."""
    drives = tuple(Drive.numbered(device, i) for i, device in enumerate(devices))
    return VmSpec(name=name, drives=drives, guest=guest, cmdline=build_cmdline(job),
                  **kwargs)  # type: ignore[arg-type]


def _safe(value: str, what: str) -> str:
    if not _SAFE_RE.match(value):
        raise ValueError(f"{what} {value!r} has characters QEMU options cannot carry")
    return value


def qemu_command(spec: VmSpec, qmp_socket: str, serial_log: str) -> list[str]:
    """The QEMU argument list for ``spec`` (pure; validated so nothing leaks into options)."""
    if spec.machine not in ("q35", "none"):
        raise ValueError(f"machine must be q35 or none, got {spec.machine!r}")
    command = [
        QEMU_BINARY,
        "-name", f"{_safe(spec.name, 'name')},debug-threads=on",
        "-machine", spec.machine,
        "-accel", "tcg",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-qmp", f"unix:{_safe(qmp_socket, 'qmp socket')},server=on,wait=off",
        # MIGRATION events from the start, as libvirt turns them on when it starts QEMU.
        "-global", "migration.x-events=on",
    ]
    if spec.machine != "none":
        command += [
            "-m", str(spec.memory_mib), "-smp", str(spec.smp), "-no-reboot",
            "-serial", f"file:{_safe(serial_log, 'serial log')}",
        ]
    if spec.guest is not None:
        if spec.machine == "none":
            raise ValueError("a guest needs machine q35")
        command += [
            "-kernel", _safe(str(spec.guest.kernel), "kernel"),
            "-initrd", _safe(str(spec.guest.initrd), "initrd"),
            "-append", spec.cmdline,
        ]
    if spec.paused:
        command.append("-S")
    seen: set[str] = set()
    for drive in spec.drives:
        for name in (drive.node_name, drive.format_node, drive.qdev_id):
            if name in seen:
                raise ValueError(f"duplicate drive name {name!r}")
            seen.add(name)
        command += [
            "-blockdev",
            f"driver=host_device,filename={_safe(drive.device, 'device')},"
            f"node-name={_safe(drive.node_name, 'node')},cache.direct=on,aio=native",
            "-blockdev",
            f"driver={_safe(drive.fmt, 'format')},file={drive.node_name},"
            f"node-name={_safe(drive.format_node, 'node')}",
        ]
        if spec.machine != "none":
            command += [
                "-device",
                f"virtio-blk-pci,drive={drive.format_node},id={_safe(drive.qdev_id, 'id')},"
                f"werror={_safe(drive.werror, 'werror')},rerror={_safe(drive.rerror, 'rerror')}",
            ]
    return [*command, *spec.extra_args]


@dataclass
class QemuVm:
    """A running (or finished) lab QEMU process."""

    spec: VmSpec
    process: Process
    workdir: Path
    qmp_socket: Path
    serial_log: Path
    stderr_log: Path
    _socket_dir: Path | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_text(self) -> str:
        try:
            return self.stderr_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_exit(self, timeout: float | None = None) -> int:  # noqa: ASYNC109 (timeout error carries the serial log)
        """Wait for QEMU to exit and return its exit code.

        Raises:
            VmError: still running after ``timeout`` seconds.
        """
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        raise VmError(self.name, f"still running after {timeout} s", self.serial_text())

    async def wait_for_serial(self, pattern: str | re.Pattern[str],
                              timeout: float = 120.0) -> re.Match[str]:  # noqa: ASYNC109 (timeout error carries the serial log)
        """Wait until the serial log matches ``pattern`` (searched in the whole text).

        Raises:
            VmError: QEMU exited without a match, or ``timeout`` passed.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with anyio.move_on_after(timeout):
            while True:
                exited = self.process.returncode is not None
                match = regex.search(self.serial_text())
                if match:
                    return match
                if exited:
                    raise VmError(self.name, f"exited ({self.process.returncode}) before "
                                  f"serial matched {regex.pattern!r}; stderr: "
                                  f"{self.stderr_text().strip()[-300:]}", self.serial_text())
                await anyio.sleep(0.05)
        raise VmError(self.name, f"serial did not match {regex.pattern!r} in {timeout} s",
                      self.serial_text())

    async def wait_for_start(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 (timeout error carries the serial log)
        """Wait until the guest is about to write its first byte."""
        await self.wait_for_serial(re.escape(START_MARKER), timeout)

    async def result(self, timeout: float = 300.0) -> GuestResult:  # noqa: ASYNC109 (timeout error carries the serial log)
        """Wait for the guest's result line and parse it."""
        match = await self.wait_for_serial(re.escape(RESULT_MARKER) + r"[^\n]*\n", timeout)
        return parse_result(match.group(0))

    async def wait_for_qmp_socket(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (timeout error carries the serial log)
        with anyio.move_on_after(timeout):
            while not self.qmp_socket.exists():
                if self.process.returncode is not None:
                    raise VmError(self.name, f"exited ({self.process.returncode}) at start: "
                                  f"{self.stderr_text().strip()[-300:]}")
                await anyio.sleep(0.02)
            return
        raise VmError(self.name, f"no QMP socket after {timeout} s")

    @asynccontextmanager
    async def qmp(self, client_name: str = "lab") -> AsyncIterator[QMPClient]:
        """A connected :class:`qemu.qmp.QMPClient`, disconnected on exit (shielded)."""
        client = await self.connect_qmp(client_name)
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await client.disconnect()
                except (EOFError, OSError):
                    pass  # QEMU exited (guest powered off): the connection is gone anyway

    async def connect_qmp(self, client_name: str = "lab", timeout: float = 10.0) -> QMPClient:  # noqa: ASYNC109
        """A connected QMPClient; the caller disconnects it."""
        await self.wait_for_qmp_socket(timeout)
        try:
            return await connect_qmp(str(self.qmp_socket), client_name, timeout)
        except ConnectError as exc:
            if self.process.returncode is not None:
                raise VmError(self.name, f"exited ({self.process.returncode}) at start: "
                              f"{self.stderr_text().strip()[-300:]}") from exc
            raise

    def send_signal(self, signum: signal.Signals) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    async def kill(self) -> None:
        """SIGKILL and reap. Safe to call after exit."""
        with anyio.CancelScope(shield=True):
            self.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps; cleans up."""
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.send_signal(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self.process.wait()
            await self.kill()
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
            log.debug("qemu stopped", vm=self.name, pid=self.pid, rc=self.process.returncode)


def retried(cause: BaseException) -> bool:
    """Whether :func:`connect_qmp` tries again after a handshake failed with ``cause``: a
    connection refused, not there yet, reset, or closed, or a greeting or negotiation that
    went wrong (its docstring says when each was seen). A QEMU that is gone keeps failing
    and the deadline ends the retries."""
    return isinstance(cause, ConnectionRefusedError | FileNotFoundError | ConnectionResetError
                      | EOFError | GreetingError | NegotiationError | TimeoutError)


async def connect_qmp(path: str, client_name: str, timeout: float = 10.0) -> QMPClient:  # noqa: ASYNC109
    """Connect a QMPClient to ``path``, retrying for up to ``timeout`` s a connect that was
    refused or whose handshake failed.

    QEMU creates its socket file (bind) a moment before it calls listen(); a connect in
    between is refused. That window is tiny on an idle machine and real on a loaded one.
    QEMU 7.2 can also stop answering its monitors for seconds (seen right after an active
    commit failed with ENOSPC, beside a CPU hog): the greeting arrives, the capabilities
    reply does not, and the handshake fails. A new connection once QEMU answers again works.
    And a client that connects right after another left can be sent what QEMU had queued
    for that one before its own greeting (seen under load: "'Greeting' object requires 'QMP'
    member"); the next connection gets a greeting first. Or QEMU resets the new connection
    during the handshake (seen in the one-hour soak, on a migration's source, under load:
    "Connection reset by peer"); the next one is accepted.
    """
    deadline = anyio.current_time() + timeout
    while True:
        client = QMPClient(client_name)
        try:
            with anyio.fail_after(max(0.5, deadline - anyio.current_time())):
                await client.connect(path)
            return client
        except (ConnectError, TimeoutError) as exc:
            if not retried(exc.exc if isinstance(exc, ConnectError) else exc):
                raise
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await client.disconnect()
            if anyio.current_time() >= deadline:
                raise
        await anyio.sleep(0.05)


def _socket_path(workdir: Path) -> tuple[Path, Path | None]:
    path = workdir.resolve() / "qmp.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path, None
    short = Path(tempfile.mkdtemp(prefix="ae-qmp-", dir="/tmp"))
    return short / "qmp.sock", short


async def launch(spec: VmSpec, workdir: str | os.PathLike[str]) -> QemuVm:
    """Start QEMU for ``spec`` with its files in ``workdir`` (created if missing).

    Returns once the QMP socket exists. Call :meth:`QemuVm.stop` (or use :func:`run_vm`).

    Raises:
        VmError: QEMU could not start (bad drive, missing kernel, ...).
    """
    directory = Path(workdir)
    qmp_socket, socket_dir = await anyio.to_thread.run_sync(_socket_path, directory)
    serial_log = directory / "serial.log"
    stderr_log = directory / "qemu.log"
    command = qemu_command(spec, str(qmp_socket), str(serial_log))

    def prepare() -> BinaryIO:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in (qmp_socket, serial_log):
            stale.unlink(missing_ok=True)
        (directory / "command").write_text(" ".join(command) + "\n")
        return open(stderr_log, "wb")

    err = await anyio.to_thread.run_sync(prepare)
    try:
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    except OSError as exc:
        raise VmError(spec.name, f"cannot run {QEMU_BINARY}: {exc.strerror}") from exc
    finally:
        err.close()
    vm = QemuVm(spec, process, directory, qmp_socket, serial_log, stderr_log, socket_dir)
    log.info("qemu started", vm=spec.name, pid=process.pid, workdir=str(directory))
    try:
        await vm.wait_for_qmp_socket()
    except BaseException:
        await vm.stop()
        raise
    return vm


@asynccontextmanager
async def run_vm(spec: VmSpec, workdir: str | os.PathLike[str]) -> AsyncIterator[QemuVm]:
    """A QEMU process for the duration of the block; stopped (TERM, then KILL) on exit."""
    vm = await launch(spec, workdir)
    try:
        yield vm
    finally:
        await vm.stop()
