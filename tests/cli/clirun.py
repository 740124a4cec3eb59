"""Run ``python -m autoextend`` as a user would, and read its stderr."""

from __future__ import annotations

import subprocess
import sys
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


def autoextend(*args: str, timeout: float = 120.0, cwd: Path | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "autoextend", *args], capture_output=True, text=True,
        timeout=timeout, check=False, cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


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
