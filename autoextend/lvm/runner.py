"""Running lvm2 commands: the :class:`LvmRunner` boundary and the one-process-per-command runner.

A runner takes an argument list (``["lvextend", "--config", ..., "vg/lv"]``, no binary, never
a shell string), runs it with a bounded number of commands at once and a timeout on each,
and returns a :class:`CommandResult` with the report text. A non-zero exit is sorted into an
:class:`~autoextend.lvm.errors.LvmError` subclass (see ``classify_failure``). A command still
running at its timeout is killed with its whole process group and reaped before
:class:`~autoextend.lvm.errors.LvmTimeoutError` is raised.

The persistent ``lvm`` shell session (``shell.py``) implements the same protocol.
"""

from __future__ import annotations

import os
import signal
import subprocess
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
    """Runs lvm2 commands. Implementations: :class:`ProcessRunner`, ``LvmShellRunner``."""

    async def run(self, args: Sequence[str]) -> CommandResult:
        """Run one command. Raises LvmError subclasses (LvmTimeoutError when killed)."""
        ...

    async def aclose(self) -> None:
        """Stop any long-lived process. Safe to call twice."""
        ...


def lvm_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment lvm2 runs in: C locale (stable messages), no fd-leak warnings."""
    env = dict(os.environ if base is None else base)
    env.update(LC_ALL="C", LANG="C", LVM_SUPPRESS_FD_WARNINGS="1")
    return env


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
    """One ``lvm <command>`` process per call (the default runner)."""

    def __init__(
        self,
        lvm_binary: str = "lvm",
        timeout_s: float = 30.0,
        max_concurrent: int = 10,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._binary = lvm_binary
        self._timeout_s = timeout_s
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self._env = lvm_environment(env)

    async def run(self, args: Sequence[str]) -> CommandResult:
        argv = tuple(args)
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

    async def aclose(self) -> None:
        return None
