"""Multi-process torture of the SPM lease on one shared file (harness; see test_torture.py).

N worker processes (torture_worker.py) contend for the SPM lease through FaultyStorage while
this harness SIGKILLs them at random (and restarts them), freezes them with SIGSTOP and thaws
them with SIGCONT. It also plays the hardware watchdog: a worker whose published SPM deadline
(DeadlineFileWatchdog) is more than W/2 past is SIGKILLed, as /dev/watchdog would reset it.

Oracles: the workers' own devcount check (V lines) and an offline history check: one host per
lver, and no check-sector write of lver L begun after a later lver was acquired.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoextend.lease.watchdog import read_deadlines

REPO = Path(__file__).resolve().parents[2]


@dataclass
class TortureResult:
    hosts: int
    seconds: float
    acquisitions: int
    violations: list[str] = field(default_factory=list)
    kills: int = 0
    stops: int = 0
    watchdog_fires: int = 0


@dataclass
class _Worker:
    host_id: int
    proc: subprocess.Popen[bytes] | None = None
    stopped_until: float = 0.0
    starts: int = 0


def check_history(log: Path) -> tuple[int, list[str]]:
    """Offline oracle over the workers' log. Returns (acquisitions, violations)."""
    acquired: dict[int, tuple[int, float]] = {}
    writes: list[tuple[int, int, float]] = []
    violations: list[str] = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "A":
            lver, host, at = int(parts[1]), int(parts[2]), float(parts[3])
            if lver in acquired:
                if acquired[lver][0] != host:
                    violations.append(f"lver {lver} acquired by {acquired[lver][0]} and {host}")
                at = min(at, acquired[lver][1])
            acquired[lver] = (acquired.get(lver, (host, at))[0], at)
        elif parts[0] == "W":
            writes.append((int(parts[1]), int(parts[2]), float(parts[3])))
        elif parts[0] == "V":
            violations.append("devcount: " + line)
    later_min: dict[int, float] = {}
    best = float("inf")
    for lver in sorted(acquired, reverse=True):
        later_min[lver] = best
        best = min(best, acquired[lver][1])
    for lver, host, t_check in writes:
        if t_check > later_min.get(lver, float("inf")):
            violations.append(f"write of lver {lver} by host {host} at {t_check} after a later "
                              f"lver was acquired at {later_min[lver]}")
    return len(acquired), violations


def run_torture(
    workdir: Path, area: Path, hosts: int, seconds: float, *, seed: int, io_timeout: float,
    watchdog: float, poll: float, max_hosts: int, faults: bool = True, chaos: bool = True,
    target: int = 0,
) -> TortureResult:
    """Run the torture for ``seconds`` on a formatted ``area``; blocking (call in a thread)."""
    rng = random.Random(seed)
    log = workdir / f"history-{hosts}.log"
    deadlines = workdir / f"deadlines-{hosts}.bin"
    deadlines.write_bytes(bytes(8 * (max_hosts + 1)))
    workers = [_Worker(h) for h in range(1, hosts + 1)]
    result = TortureResult(hosts, seconds, 0)

    def start(w: _Worker) -> None:
        with open(deadlines, "r+b") as f:
            f.seek(8 * w.host_id)
            f.write(bytes(8))
        w.starts += 1
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lease.torture_worker", "--path", str(area),
             "--log", str(log), "--deadlines", str(deadlines), "--host-id", str(w.host_id),
             "--seed", str(seed * 1000 + w.host_id * 10 + w.starts),
             "--max-hosts", str(max_hosts), "--io-timeout", str(io_timeout),
             "--watchdog", str(watchdog), "--poll", str(poll)] + (["--faults"] if faults else []),
            cwd=REPO, preexec_fn=lambda: os.nice(5), stderr=subprocess.DEVNULL if chaos else None,
        )
        w.stopped_until = 0.0

    def kill(w: _Worker) -> None:
        assert w.proc is not None
        w.proc.kill()
        w.proc.wait()
        start(w)

    for w in workers:
        start(w)
    began = time.monotonic()
    next_chaos = began + 1.0
    next_count = began + 1.0
    try:
        while time.monotonic() - began < seconds:
            time.sleep(0.003)
            now = time.monotonic()
            if target and now >= next_count:
                next_count = now + 1.0
                if log.exists() and log.read_bytes().count(b"\nA ") >= target:
                    break
            marks = read_deadlines(str(deadlines), max_hosts + 1)
            for w in workers:
                assert w.proc is not None
                if w.proc.poll() is not None:
                    start(w)  # crashed on its own (e.g. unexpected error): restart
                    continue
                if marks[w.host_id] and now > marks[w.host_id] + watchdog / 2:
                    result.watchdog_fires += 1
                    kill(w)
                elif w.stopped_until and now >= w.stopped_until:
                    w.proc.send_signal(signal.SIGCONT)
                    w.stopped_until = 0.0
            if chaos and now >= next_chaos:
                next_chaos = now + rng.uniform(0.2, 1.0)
                victim = rng.choice(workers)
                if rng.random() < 0.5:
                    result.kills += 1
                    kill(victim)
                elif not victim.stopped_until and victim.proc is not None:
                    result.stops += 1
                    victim.proc.send_signal(signal.SIGSTOP)
                    victim.stopped_until = now + rng.uniform(0.0, 12 * io_timeout)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
    result.acquisitions, result.violations = check_history(log)
    return result


if __name__ == "__main__":  # long soak: python -m tests.lease.torture SECONDS [HOSTS]
    import tempfile

    import anyio

    from .torture_setup import format_file

    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 3600.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-soak-") as tmp:
        area_file = Path(tmp) / "area.img"
        anyio.run(format_file, area_file, 16)
        res = run_torture(Path(tmp), area_file, n, secs, seed=os.getpid(), io_timeout=0.05,
                          watchdog=0.3, poll=0.005, max_hosts=16)
        print(res)
        sys.exit(1 if res.violations else 0)
