"""A persistent ``lvm`` shell session behind the :class:`~autoextend.lvm.runner.LvmRunner` protocol.

``lvm`` started without arguments reads commands from stdin, one per line, and saves the
process start and library setup of every command. Each command's outcome is read from a
report pipe (``LVM_REPORT_FD``): the session runs with a private ``LVM_SYSTEM_DIR`` whose
``lvm.conf`` asks for JSON output with the command log, so every command answers with exactly
one JSON document whose last ``shell``/``cmd`` status entry carries its return code, and whose
``error``/``warn`` entries carry its messages. Everything else (the pool's devices filter,
activation, ...) comes with each command's ``--config``, as with :class:`ProcessRunner`.
(The host's own ``/etc/lvm/lvm.conf`` is therefore not read in shell mode.)

Commands run one at a time in a session. A command that times out, is cancelled, or gets an
answer that is not a well-formed document kills the session (its whole process group) and
reaps it; the next command starts a fresh session.

One session for the whole host would serialize every VG's commands (4 VGs extended at once
gave 1.15x the extends/s of one VG here, against 3.4x with a session each).
:class:`PerVgShellRunner` therefore keeps one session per VG (commands of no one VG get one
of their own): VGs run in parallel, each VG one command at a time. lvm2's own locks are per
VG too (``V_<vg>`` files under ``/run/lock/lvm``; an lvextend takes no global lock), so
nothing below serializes the VGs again.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import Process

from autoextend import logs
from autoextend.lvm.errors import (
    LvmCommandError,
    LvmReportError,
    LvmTimeoutError,
    classify_failure,
)
from autoextend.lvm.runner import (
    MAX_OUTPUT,
    CommandResult,
    LvmRunner,
    kill_process_group,
    lvm_environment,
)

log = logs.get_logger("lvm")

SESSION_LVM_CONF = (
    'report {\n    output_format = "json"\n}\n'
    'log {\n    report_command_log = 1\n    command_log_selection = "all"\n}\n'
)
AIO_OFF = "global {\n    use_aio = 0\n}\n"  # see runner.NO_AIO_CONF
LVM_RET_SUCCESS = 1  # lvm2's ECMD_PROCESSED
_SPECIAL = set(" \t\"'#\\")


def quote_arg(arg: str) -> str:
    """Quote one argument for the lvm shell's line splitter (pure).

    The splitter separates on whitespace and takes a word between matching single or double
    quotes verbatim; there is no escape character. So an argument may hold one kind of quote
    but not both, and never a newline.
    """
    if "\n" in arg or "\r" in arg or "\0" in arg:
        raise ValueError(f"argument cannot be passed to the lvm shell: {arg!r}")
    if arg and not (_SPECIAL & set(arg)):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    if '"' not in arg:
        return f'"{arg}"'
    raise ValueError(f"argument holds both quote kinds: {arg!r}")


def shell_line(args: Sequence[str]) -> str:
    """One command line for the lvm shell."""
    return " ".join(quote_arg(arg) for arg in args)


def split_shell_line(line: str) -> list[str]:
    """The splitter :func:`quote_arg` targets (used by tests to check round trips)."""
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        if line[i] in "'\"":
            end = line.index(line[i], i + 1)
            words.append(line[i + 1 : end])
            i = end + 1
            continue
        end = i
        while end < len(line) and line[end] not in " \t":
            end += 1
        words.append(line[i:end])
        i = end
    return words


def interpret_answer(text: str) -> tuple[int, str]:
    """``(returncode, messages)`` from one answer document (pure).

    ``returncode`` is 0 on success, else lvm2's failure code (5 failed, 3 bad arguments, ...).
    Raises ValueError when the document is not an lvm2 answer.
    """
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("log"), list):
        raise ValueError("no 'log' list in the answer")
    status: int | None = None
    messages: list[str] = []
    for entry in doc["log"]:
        if not isinstance(entry, dict):
            raise ValueError("a log entry is not an object")
        kind = entry.get("log_type")
        message = entry.get("log_message")
        if not isinstance(kind, str) or not isinstance(message, str):
            raise ValueError("a log entry lacks log_type or log_message")
        if kind in ("error", "warn"):
            messages.append(message)
        if kind == "status" and entry.get("log_context") == "shell":
            code = entry.get("log_ret_code")
            if not (isinstance(code, str) and code.isdigit()):
                raise ValueError(f"bad log_ret_code {code!r}")
            status = int(code)
    if status is None:
        raise ValueError("no command status in the answer")
    return (0 if status == LVM_RET_SUCCESS else status or 5), "\n".join(messages)


class _NotSent(Exception):
    """The session died before it received the command (safe to retry on a new one)."""


def _prepare_state_dir(lvm_conf: str) -> tuple[str, int]:
    """A private LVM_SYSTEM_DIR with the session's lvm.conf, and a file for its stderr."""
    state_dir = tempfile.mkdtemp(prefix="autoextend-lvmshell-")
    with open(os.path.join(state_dir, "lvm.conf"), "w") as conf:
        conf.write(lvm_conf)
    stderr_fd = os.open(
        os.path.join(state_dir, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    return state_dir, stderr_fd


class _Session:
    """One running ``lvm`` shell process and its report pipe."""

    def __init__(self, process: Process, report_fd: int, state_dir: str) -> None:
        self.process = process
        self.report_fd = report_fd
        self.state_dir = state_dir

    @classmethod
    async def start(cls, binary: str, env: Mapping[str, str], lvm_conf: str) -> _Session:
        state_dir, stderr_fd = await anyio.to_thread.run_sync(_prepare_state_dir, lvm_conf)
        read_fd, write_fd = os.pipe()
        try:
            os.set_blocking(read_fd, False)
            session_env = dict(env)
            session_env.update(
                LVM_SYSTEM_DIR=state_dir, LVM_REPORT_FD=str(write_fd), HOME=state_dir
            )
            process = await anyio.open_process(
                [binary],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr_fd,
                env=session_env,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            shutil.rmtree(state_dir, ignore_errors=True)
            raise
        finally:
            os.close(write_fd)
            os.close(stderr_fd)
        return cls(process, read_fd, state_dir)

    def _unusable_before_send(self) -> bool:
        """True when the shell has gone (its end of the report pipe is closed).

        Between commands nothing may be waiting on the report pipe. A session that died
        (killed from outside) has closed its end, so a read returns EOF at once. Checked
        before a command is sent: a write to a dead shell's stdin can still succeed for a
        moment (the pipe transport learns of the closed reader later), and the command
        would then be reported as lost instead of being retried on a new session.
        Stray bytes between commands also mean the session cannot be trusted.
        """
        readable, _, _ = select.select([self.report_fd], [], [], 0)
        if not readable:
            return False
        try:
            os.read(self.report_fd, 1 << 16)  # b"" (EOF: gone) or stray bytes: both unusable
        except BlockingIOError:
            return False
        return True

    async def execute(self, line: str) -> str:
        """Send one command; return its answer document (waits until it is complete).

        Raises _NotSent when the session is gone before the command reached it."""
        assert self.process.stdin is not None
        if self._unusable_before_send():
            raise _NotSent("the lvm shell exited (or wrote out of turn) before the command")
        try:
            await self.process.stdin.send(line.encode() + b"\n")
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as err:
            raise _NotSent(str(err)) from err
        buffer = bytearray()
        while True:
            await anyio.wait_readable(self.report_fd)
            try:
                chunk = os.read(self.report_fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the lvm shell closed its report pipe (it exited)")
            buffer.extend(chunk)
            if len(buffer) > MAX_OUTPUT:
                raise ValueError(f"answer larger than {MAX_OUTPUT} bytes")
            if buffer.rstrip().endswith(b"}"):
                text = buffer.decode("utf-8", "replace")
                try:
                    json.loads(text)
                except json.JSONDecodeError:
                    continue  # not complete yet
                return text

    def stderr_tail(self) -> str:
        try:
            with open(os.path.join(self.state_dir, "stderr"), "rb") as file:
                file.seek(0, os.SEEK_END)
                file.seek(max(0, file.tell() - 2000))
                return file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    async def kill(self) -> None:
        """Kill and reap (shielded), then release the pipe and the state directory."""
        with anyio.CancelScope(shield=True):
            kill_process_group(self.process)
            await self.process.wait()
            await self.process.aclose()
            self._release()

    async def close(self, grace_s: float = 5.0) -> None:
        """End the session politely (EOF on stdin), killing it after ``grace_s``."""
        with anyio.CancelScope(shield=True):
            assert self.process.stdin is not None
            try:
                await self.process.stdin.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass
            with anyio.move_on_after(grace_s):
                await self.process.wait()
            if self.process.returncode is None:
                kill_process_group(self.process)
                await self.process.wait()
            await self.process.aclose()
            self._release()

    def _release(self) -> None:
        if self.report_fd >= 0:
            os.close(self.report_fd)
            self.report_fd = -1
        shutil.rmtree(self.state_dir, ignore_errors=True)


class LvmShellRunner:
    """Runs commands through one persistent ``lvm`` shell, restarted after any failure."""

    def __init__(
        self,
        lvm_binary: str = "lvm",
        timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
        use_aio: bool = False,
    ) -> None:
        self._binary = lvm_binary
        self._timeout_s = timeout_s
        self._env = lvm_environment(env)
        self._lvm_conf = SESSION_LVM_CONF + ("" if use_aio else AIO_OFF)
        self._lock = anyio.Lock()
        self._session: _Session | None = None
        self.sessions_started = 0

    @property
    def session_pid(self) -> int | None:
        return self._session.process.pid if self._session is not None else None

    async def run(self, args: Sequence[str]) -> CommandResult:
        argv = tuple(args)
        try:
            line = shell_line(argv)
        except ValueError as err:
            raise LvmCommandError(argv, str(err)) from err
        async with self._lock:
            started = time.monotonic()
            try:
                returncode, text, messages = await self._run_in_session(argv, line)
            except _NotSent:
                log.info("lvm shell session was gone; retrying on a new one", argv=argv[0])
                returncode, text, messages = await self._run_in_session(argv, line)
        duration = time.monotonic() - started
        if returncode != 0:
            raise classify_failure(argv, returncode, messages)
        return CommandResult(argv, text, messages, duration)

    async def _run_in_session(self, argv: tuple[str, ...], line: str) -> tuple[int, str, str]:
        session = await self._ensure_session(argv)
        answered = False
        try:
            with anyio.move_on_after(self._timeout_s) as scope:
                text = await session.execute(line)
                returncode, messages = interpret_answer(text)
                answered = True
            if scope.cancelled_caught:
                log.warning("lvm shell command timed out", argv=argv[0])
                raise LvmTimeoutError(argv, self._timeout_s, session.stderr_tail())
        except (ValueError, EOFError, OSError, anyio.BrokenResourceError) as err:
            raise LvmReportError(argv, f"lvm shell: {err}", session.stderr_tail()) from err
        finally:
            if not answered:
                self._session = None
                await session.kill()
        return returncode, text, messages

    async def _ensure_session(self, argv: tuple[str, ...]) -> _Session:
        if self._session is None or self._session.process.returncode is not None:
            if self._session is not None:
                await self._session.kill()
            try:
                self._session = await _Session.start(self._binary, self._env, self._lvm_conf)
            except OSError as err:
                raise LvmCommandError(argv, f"cannot start {self._binary}: {err}") from err
            self.sessions_started += 1
            log.debug("lvm shell started", pid=self._session.process.pid)
        return self._session

    def for_vg(self, vg: str) -> LvmRunner:
        return self  # one session: every VG's commands one at a time (PerVgShellRunner: not)

    async def aclose(self) -> None:
        async with self._lock:
            session, self._session = self._session, None
            if session is not None:
                await session.close()


class PerVgShellRunner:
    """An :class:`LvmShellRunner` per VG (``for_vg``), and one for commands of no one VG
    (``run``). At most ``max_sessions`` sessions in all, each started at its first command;
    past that, VGs share the VG sessions in turn (each still one command at a time).
    ``make_session`` builds one session's runner (tests wrap it to watch the commands)."""

    def __init__(
        self,
        lvm_binary: str = "lvm",
        timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
        use_aio: bool = False,
        max_sessions: int = 10,
        make_session: Callable[[], LvmRunner] | None = None,
    ) -> None:
        if max_sessions < 2:
            raise ValueError(f"max_sessions must be at least 2, got {max_sessions}")
        self._make: Callable[[], LvmRunner] = make_session or (
            lambda: LvmShellRunner(lvm_binary, timeout_s, env, use_aio))
        self._max_sessions = max_sessions
        self._shared = self._make()  # commands of no one VG
        self._sessions: list[LvmRunner] = []  # the VG sessions, in the order made
        self._by_vg: dict[str, LvmRunner] = {}

    def for_vg(self, vg: str) -> LvmRunner:
        runner = self._by_vg.get(vg)
        if runner is None:
            if len(self._sessions) < self._max_sessions - 1:
                runner = self._make()
                self._sessions.append(runner)
            else:  # the cap: share, in turn
                runner = self._sessions[len(self._by_vg) % len(self._sessions)]
            self._by_vg[vg] = runner
        return runner

    async def run(self, args: Sequence[str]) -> CommandResult:
        return await self._shared.run(args)

    async def aclose(self) -> None:
        for runner in (self._shared, *self._sessions):
            await runner.aclose()
