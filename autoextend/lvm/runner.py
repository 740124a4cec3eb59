"""Running lvm2 commands: the :class:`LvmRunner` boundary and the one-process-per-command runner.

A runner takes an argument list (``["lvextend", "--config", ..., "vg/lv"]``, no binary, never
a shell string), runs it with a bounded number of commands at once and a timeout on each,
and returns a :class:`CommandResult` with the report text. A non-zero exit is sorted into an
:class:`~autoextend.lvm.errors.LvmError` subclass (see ``classify_failure``). A command still
running at its timeout is killed with its whole process group and reaped before
:class:`~autoextend.lvm.errors.LvmTimeoutError` is raised.

The persistent ``lvm`` shell session (``shell.py``) implements the same protocol. Every
runner has ``for_vg``: most return themselves, ``shell.PerVgShellRunner`` the VG's own
session. The reader and the writer send each command on a VG through :func:`runner_for`,
so VGs run in parallel.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import ByteReceiveStream, Process

from autoextend import logs
from autoextend.lvm.errors import LvmCommandError, LvmTimeoutError, classify_failure

log = logs.get_logger("lvm")

MAX_OUTPUT = 64 << 20  # a report larger than this is garbage, not a pool's metadata


@dataclass(frozen=True)
class CommandResult:
    """A command that exited 0. ``stdout`` holds the JSON report (if the command prints one);
    ``stderr`` its warnings."""

    argv: tuple[str, ...]
    stdout: str
    stderr: str
    duration_s: float


class LvmRunner(Protocol):
    """Runs lvm2 commands. Implementations: :class:`ProcessRunner`, ``LvmShellRunner``,
    ``PerVgShellRunner``."""

    async def run(self, args: Sequence[str]) -> CommandResult:
        """Run one command. Raises LvmError subclasses (LvmTimeoutError when killed)."""
        ...

    async def aclose(self) -> None:
        """Stop any long-lived process. Safe to call twice."""
        ...

    def for_vg(self, vg: str) -> LvmRunner:
        """The runner for commands on ``vg``: itself, or the VG's own runner where this one
        keeps one per VG (``shell.PerVgShellRunner``: VGs then run in parallel, each one
        command at a time)."""
        ...


def runner_for(runner: LvmRunner, vg: str | None) -> LvmRunner:
    """The runner for a command on ``vg`` (``runner.for_vg``); ``runner`` itself for a
    command of no one VG (``vg`` None)."""
    return runner if vg is None else runner.for_vg(vg)


def lvm_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment lvm2 runs in: C locale (stable messages), no fd-leak warnings."""
    env = dict(os.environ if base is None else base)
    env.update(LC_ALL="C", LANG="C", LVM_SUPPRESS_FD_WARNINGS="1")
    return env


# lvm2 tears down its AIO context at the end of every command, and io_destroy waits about
# 35 ms here (measured with strace: 40 ms of a 45 ms `lvs`). use_aio is read from lvm.conf
# only (a --config override comes too late), hence the private LVM_SYSTEM_DIR.
NO_AIO_CONF = "global {\n    use_aio = 0\n}\n"


_SYSTEM_DIRS: dict[str, str] = {}


def prepare_system_dir(lvm_conf: str) -> str:
    """A private LVM_SYSTEM_DIR whose lvm.conf is exactly ``lvm_conf`` (blocking, small).
    One per content per process, removed at exit."""
    path = _SYSTEM_DIRS.get(lvm_conf)
    if path is None or not os.path.exists(os.path.join(path, "lvm.conf")):
        path = tempfile.mkdtemp(prefix="autoextend-lvmconf-")
        with open(os.path.join(path, "lvm.conf"), "w") as conf:
            conf.write(lvm_conf)
        _SYSTEM_DIRS[lvm_conf] = path
        atexit.register(shutil.rmtree, path, True)
    return path


def kill_process_group(process: Process) -> None:
    """SIGKILL the process and anything it started (it leads its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _drain(stream: ByteReceiveStream | None, sink: bytearray) -> None:
    if stream is None:
        return
    async for chunk in stream:
        # Past the cap, keep reading (so the command does not block) but keep nothing more;
        # the truncated report then fails to parse and is never acted on.
        if len(sink) < MAX_OUTPUT:
            sink.extend(chunk[: MAX_OUTPUT - len(sink)])


class ProcessRunner:
    """One ``lvm <command>`` process per call.

    With ``use_aio=False`` (the default) lvm2 runs with a private ``LVM_SYSTEM_DIR`` whose
    lvm.conf only turns AIO off (5x faster per command here); the host's lvm.conf is then not
    read, and everything else comes from each command's ``--config``. ``use_aio=True`` runs
    with the host's lvm.conf.
    """

    def __init__(
        self,
        lvm_binary: str = "lvm",
        timeout_s: float = 30.0,
        max_concurrent: int = 10,
        env: Mapping[str, str] | None = None,
        use_aio: bool = False,
    ) -> None:
        self._binary = lvm_binary
        self._timeout_s = timeout_s
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self._env = lvm_environment(env)
        self._use_aio = use_aio
        self._system_dir: str | None = None
        self._setup_lock = anyio.Lock()

    async def _prepare(self) -> None:
        if self._use_aio or self._system_dir is not None:
            return
        async with self._setup_lock:
            if self._system_dir is None:
                path = await anyio.to_thread.run_sync(prepare_system_dir, NO_AIO_CONF)
                self._env["LVM_SYSTEM_DIR"] = path
                self._system_dir = path

    async def run(self, args: Sequence[str]) -> CommandResult:
        argv = tuple(args)
        await self._prepare()
        async with self._limiter:
            started = time.monotonic()
            returncode, out, err = await self._run_once(argv)
            duration = time.monotonic() - started
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        log.debug("lvm command", argv=argv[0], rc=returncode, duration_s=duration)
        if returncode != 0:
            raise classify_failure(argv, returncode, stderr)
        return CommandResult(argv, stdout, stderr, duration)

    async def _run_once(self, argv: tuple[str, ...]) -> tuple[int, bytes, bytes]:
        out, err = bytearray(), bytearray()
        try:
            process = await anyio.open_process(
                [self._binary, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        except OSError as err_:
            raise LvmCommandError(argv, f"cannot run {self._binary}: {err_}") from err_
        finished = False
        try:
            with anyio.move_on_after(self._timeout_s) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, process.stdout, out)
                    tg.start_soon(_drain, process.stderr, err)
                    await process.wait()
                finished = True
            if scope.cancelled_caught:
                log.warning("lvm command timed out", argv=argv[0], timeout_s=self._timeout_s)
                raise LvmTimeoutError(argv, self._timeout_s, err.decode("utf-8", "replace"))
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:
                    # Timed out, cancelled or failed: kill the group (a child may hold the
                    # pipes after its parent died), then reap.
                    kill_process_group(process)
                await process.wait()
                await process.aclose()
        assert process.returncode is not None
        return process.returncode, bytes(out), bytes(err)

    def for_vg(self, vg: str) -> LvmRunner:
        return self  # one limiter for all: commands of different VGs already run at once

    async def aclose(self) -> None:
        return None  # the shared private LVM_SYSTEM_DIR is removed at process exit
