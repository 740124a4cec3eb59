"""Run ``autoextend run`` as a real process for tests/ops, and ask it for ``status``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "autoextend"]


def status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--config", str(cfg), "status", *extra], capture_output=True,
                          text=True, timeout=60, check=False)


def status_json(cfg: Path) -> dict[str, Any] | None:
    result = status(cfg, "--json")
    return json.loads(result.stdout) if result.returncode == 0 else None


def poll(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)  # poll with a deadline (a sync helper)


class Running:
    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc, self.log = proc, log

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line, "level": "unparsed"})
        return out


@contextmanager
def service(cfg: Path, workdir: Path) -> Iterator[Running]:
    """``autoextend --config cfg run`` with JSON logs in ``workdir/service.log``; SIGTERM (then
    SIGKILL) at the end, whatever happens."""
    log = workdir / "service.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([*CLI, "--config", str(cfg), "--log-format", "json", "run"],
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        yield Running(proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
