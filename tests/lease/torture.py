"""Multi-process torture of the SPM lease on one shared file (harness; see test_torture.py).

N worker processes (torture_worker.py, forked by torture_spawner.py) contend for the SPM lease
through FaultyStorage while this harness SIGKILLs them at random (and restarts them), freezes
them with SIGSTOP and thaws them with SIGCONT. It also plays the hardware watchdog: a worker
whose published SPM deadline (DeadlineFileWatchdog) is more than W/2 past is SIGKILLed, as
/dev/watchdog would reset it.

Two thirds of the killed workers restart at once (forked from a pre-imported spawner in a few
ms), so the others see a new generation in the holder's slot and take over early; the rest
stay away for 1 to 2 times host_dead, so the others must wait for the holder's host id to be
DEAD (the 8T+W rule).

Oracles: the workers' own devcount check (V lines) and an offline history check: one host per
lver, and no check-sector write of lver L begun after a later lver was acquired.
"""

from __future__ import annotations

import mmap
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from autoextend.lease.watchdog import SLOT

REPO = Path(__file__).resolve().parents[2]
TICK_S = 0.005


class TortureTiming(TypedDict):
    io_timeout: float  # T
    watchdog: float    # W
    poll: float        # how often a waiting host re-reads the lease
    pause: float       # a holder pauses 0..pause between its terms


TORTURE_TIMING: TortureTiming = {"io_timeout": 0.05, "watchdog": 0.3, "poll": 0.02,
                                 "pause": 0.005}


@dataclass
class TortureResult:
    hosts: int
    seconds: float
    acquisitions: int
    violations: list[str] = field(default_factory=list)
    kills: int = 0
    stops: int = 0
    watchdog_fires: int = 0
    restarts: int = 0


class Spawner:
    """Client of torture_spawner.py: fork workers, signal them by pidfd, reap them."""

    def __init__(self, errors: Path | None, nice: int) -> None:
        """Workers' stderr goes to ``errors`` (None: inherited)."""
        with open(errors or os.devnull, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.lease.torture_spawner"], cwd=REPO, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err if errors is not None else None,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def spawn(self, args: list[str]) -> tuple[int, int]:
        """Start a worker; returns (pid, pidfd)."""
        assert self.proc.stdout is not None
        self._send("spawn " + " ".join(args))
        reply = self.proc.stdout.readline().split()
        if len(reply) != 2 or reply[0] != "pid":
            raise RuntimeError(f"torture spawner: unexpected reply {reply!r}")
        pid = int(reply[1])
        return pid, os.pidfd_open(pid)

    def reap(self, pid: int, pidfd: int) -> None:
        os.close(pidfd)
        self._send(f"reap {pid}")

    def close(self) -> None:
        """EOF: the spawner SIGKILLs and reaps whatever is left, then exits."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def exited(pidfd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([pidfd], [], [], timeout)[0])


@dataclass
class _Worker:
    host_id: int
    pid: int = 0
    pidfd: int = -1
    stopped_until: float = 0.0
    restart_at: float = 0.0
    starts: int = 0


class AcquisitionCounter:
    """Counts "A" lines of the history log incrementally (one read of the new bytes a call)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = 0
        self.total = 0
        self.partial = b""

    def count(self) -> int:
        if not self.log.exists():
            return 0
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            data = self.partial + f.read()
        self.offset += len(data) - len(self.partial)
        complete, _, self.partial = data.rpartition(b"\n")
        self.total += sum(1 for line in complete.split(b"\n") if line.startswith(b"A "))
        return self.total


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
    stop: Callable[[int], bool] | None = None, nice: int = 0, pause: float = -1.0,
) -> TortureResult:
    """Run the torture for ``seconds`` on a formatted ``area``; blocking (call in a thread).

    ``stop`` is called about twice a second with the acquisitions so far (counted from the
    history log); it returns True to end the run early."""
    rng = random.Random(seed)
    host_dead = 8 * io_timeout + watchdog
    log = workdir / f"history-{hosts}.log"
    deadlines = workdir / f"deadlines-{hosts}.bin"
    deadlines.write_bytes(bytes(SLOT.size * (max_hosts + 1)))
    workers = [_Worker(h) for h in range(1, hosts + 1)]
    result = TortureResult(hosts, seconds, 0)
    spawner = Spawner(workdir / f"workers-{hosts}.err" if chaos else None, nice)

    with open(deadlines, "r+b") as f:
        marks = mmap.mmap(f.fileno(), 0)

    def start(w: _Worker) -> None:
        SLOT.pack_into(marks, SLOT.size * w.host_id, 0.0)
        w.starts += 1
        w.pid, w.pidfd = spawner.spawn(
            ["--path", str(area), "--log", str(log), "--deadlines", str(deadlines),
             "--host-id", str(w.host_id), "--seed", str(seed * 1000 + w.host_id * 10 + w.starts),
             "--max-hosts", str(max_hosts), "--io-timeout", str(io_timeout),
             "--watchdog", str(watchdog), "--poll", str(poll), "--pause", str(pause)]
            + (["--faults"] if faults else [])
        )
        w.stopped_until = 0.0
        w.restart_at = 0.0

    def stop_and_reap(w: _Worker) -> None:
        signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
        if not exited(w.pidfd, 10.0):
            raise RuntimeError(f"torture worker {w.pid} survived SIGKILL")
        spawner.reap(w.pid, w.pidfd)
        w.pid, w.pidfd = 0, -1

    def kill(w: _Worker, now: float, delay: bool) -> None:
        stop_and_reap(w)
        if delay and rng.random() < 1 / 3:
            w.restart_at = now + rng.uniform(host_dead, 2 * host_dead)
        else:
            start(w)

    try:
        for w in workers:
            start(w)
        began = time.monotonic()
        next_chaos = began + 1.0
        next_count = began + 0.5
        counter = AcquisitionCounter(log)
        while time.monotonic() - began < seconds:
            time.sleep(TICK_S)  # time is the subject: the torture's clock tick
            now = time.monotonic()
            if stop is not None and now >= next_count:
                next_count = now + 0.5
                if stop(counter.count()):
                    break
            for w in workers:
                if not w.pid:
                    if now >= w.restart_at:
                        result.restarts += 1
                        start(w)
                    continue
                if exited(w.pidfd):
                    spawner.reap(w.pid, w.pidfd)  # died on its own (unexpected error)
                    w.pid, w.pidfd = 0, -1
                    continue
                deadline = SLOT.unpack_from(marks, SLOT.size * w.host_id)[0]
                if deadline and now > deadline + watchdog / 2:
                    result.watchdog_fires += 1
                    kill(w, now, delay=False)
                elif w.stopped_until and now >= w.stopped_until:
                    signal.pidfd_send_signal(w.pidfd, signal.SIGCONT)
                    w.stopped_until = 0.0
            if chaos and now >= next_chaos:
                next_chaos = now + rng.uniform(0.2, 1.0)
                victim = rng.choice(workers)
                if not victim.pid:
                    pass
                elif rng.random() < 0.5:
                    result.kills += 1
                    kill(victim, now, delay=True)
                elif not victim.stopped_until:
                    result.stops += 1
                    signal.pidfd_send_signal(victim.pidfd, signal.SIGSTOP)
                    victim.stopped_until = now + rng.uniform(0.0, 12 * io_timeout)
    finally:
        for w in workers:
            if w.pid:
                stop_and_reap(w)
        spawner.close()
        marks.close()
    result.acquisitions, result.violations = check_history(log)
    return result


if __name__ == "__main__":  # long soak: python -m tests.lease.torture SECONDS [HOSTS]
    import tempfile

    import anyio

    from autoextend.lab.leasefile import format_file

    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 3600.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-soak-") as tmp:
        area_file = Path(tmp) / "area.img"
        anyio.run(format_file, area_file, 16)
        res = run_torture(Path(tmp), area_file, n, secs, seed=os.getpid(), max_hosts=16,
                          **TORTURE_TIMING)
        print(res)
        sys.exit(1 if res.violations else 0)
