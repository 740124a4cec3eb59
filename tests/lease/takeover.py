"""Drive two takeover_worker processes: SIGKILL takeover and clean-release takeover timings.
Used by test_takeover.py and bench/lease_bench.py."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Takeover:
    last_renewal: float   # holder's last renewal start (or release time)
    acquired: float       # when the other host held the lease

    @property
    def seconds(self) -> float:
        return self.acquired - self.last_renewal


class _Proc:
    def __init__(self, area: Path, host_id: int, t: float, w: float, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lease.takeover_worker", "--path", str(area),
             "--host-id", str(host_id), "--io-timeout", str(t), "--watchdog", str(w), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
        )
        self.lines: list[list[str]] = []

    def expect(self, word: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited before {word}")
            parts = line.split()
            self.lines.append(parts)
            if parts and parts[0] == word:
                return parts
        raise TimeoutError(word)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def measure(area: Path, t: float, w: float, *, kill: bool, timeout: float) -> Takeover:
    """Host 1 takes the lease; host 2 waits; then host 1 is SIGKILLed (kill=True) or steps
    down. Returns the holder's last renewal start (or step-down time) and host 2's ACQ."""
    a = _Proc(area, 1, t, w, "--release-on-stdin")
    b: _Proc | None = None
    try:
        a.expect("ACQ", timeout)
        a.expect("RENEW", timeout)
        b = _Proc(area, 2, t, w)
        b.expect("JOINED", timeout)
        time.sleep(3 * t)   # b is polling the lease and watching a's renewals
        assert b.proc.poll() is None
        last = max(float(p[1]) for p in a.lines if p[0] == "RENEW")
        if kill:
            a.proc.kill()
            a.proc.wait()
            # The holder may have renewed between our last read of its output and the kill.
            assert a.proc.stdout is not None
            for line in a.proc.stdout.read().splitlines():
                parts = line.split()
                if parts and parts[0] == "RENEW":
                    last = max(last, float(parts[1]))
        else:
            assert a.proc.stdin is not None
            last = time.monotonic()
            a.proc.stdin.write("release\n")
            a.proc.stdin.flush()
        got = b.expect("ACQ", timeout)
        return Takeover(last, float(got[2]))
    finally:
        a.stop()
        if b is not None:
            b.stop()
