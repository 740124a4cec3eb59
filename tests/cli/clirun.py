"""Run ``python -m autoextend`` as a user would, and read its stderr."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """stderr without the service's JSON log lines (tests run with --log-format json)."""
        return [line for line in self.stderr.splitlines() if not line.startswith("{")]

    @property
    def error(self) -> str:
        """The one error line; fails the test when there is not exactly one."""
        lines = self.error_lines
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr, self.stderr
        return lines[0]


def autoextend(*args: str, timeout: float = 120.0, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> Result:
    """``python -m autoextend ARGS`` in a process of its own: forked from a process that has
    imported the package already (about 0.25 s less per call), or started afresh with
    ``AUTOEXTEND_CLI_FORK=0`` or when the fork server is not available. ``env``: the
    environment (default: this process's)."""
    if os.environ.get("AUTOEXTEND_CLI_FORK", "1") != "0":
        server = _fork_server()
        if server is not None:
            return server.run(list(args), timeout, cwd, env)
    proc = subprocess.run(
        [sys.executable, "-m", "autoextend", *args], capture_output=True, text=True,
        timeout=timeout, check=False, cwd=cwd, env=env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# The fork server: a single-threaded Python that has imported the CLI, and forks one child per
# call. The child is a process like `python -m autoextend` (its own stdout, stderr, cwd, the
# caller's environment at the call, a normal interpreter exit), minus the imports.
_SERVER = r"""
import json, os, sys
import autoextend.cli.main as cli_main
import autoextend.cli.service, autoextend.service  # what `run` and `status` import lazily

def child(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY),
                            (2, req["err"], os.O_WRONLY)):
        new = os.open(path, flags)
        os.dup2(new, fd)
        os.close(new)
    sys.argv = [cli_main.__file__, *req["args"]]
    raise SystemExit(cli_main.main())  # the interpreter exits as `python -m` would

reply = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        child(req)
    reply.write(json.dumps({"pid": pid}) + "\n")
    reply.flush()
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
    reply.flush()
"""


class _ForkServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        self.lock = threading.Lock()

    def run(self, args: list[str], timeout: float, cwd: Path | None,
            env: dict[str, str] | None = None) -> Result:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock, tempfile.TemporaryDirectory(prefix="ae-cli-") as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            out.touch()
            err.touch()
            request = {"args": args, "cwd": str(cwd or Path.cwd()),
                       "env": dict(os.environ if env is None else env),
                       "out": str(out), "err": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = json.loads(self.proc.stdout.readline())["pid"]
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                self.proc.stdout.readline()
                raise subprocess.TimeoutExpired(["autoextend", *args], timeout)
            code = json.loads(self.proc.stdout.readline())["code"]
            return Result(code, out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_server: list[_ForkServer | None] = []


def _fork_server() -> _ForkServer | None:
    """Started on first use (None if it cannot start); stopped when the tests end."""
    if not _server:
        try:
            server: _ForkServer | None = _ForkServer()
        except OSError:
            server = None
        _server.append(server)
        if server is not None:
            atexit.register(server.close)
    return _server[0]


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def loop_config(tmp_path: Path, extra: str = "", service: str = "") -> str:
    """A config that starts without QEMU, libvirtd or lvm2: loop volumes, QMP sockets that
    nothing creates, everything under ``tmp_path``."""
    return (
        f'[service]\ncontrol_socket = "{tmp_path}/ctl.sock"\n{service}\n'
        f'[volumes]\nbackend = "loop"\nloop_root = "{tmp_path}/volumes"\n'
        f'[qmp]\nsocket_glob = "{tmp_path}/qmp/*.sock"\n'
        f"{extra}"
    )
