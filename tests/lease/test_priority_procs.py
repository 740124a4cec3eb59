"""SPM priority between real processes on a shared O_DIRECT file: hosts with priorities
0 / 5 / never start together; the 5 host wins the free election, and over 20 elections
(each SPM steps down after holding the role longer than a step-down's hold-off) the never host never holds it."""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import anyio
import pytest

from autoextend.lab.leasefile import format_file

REPO = Path(__file__).resolve().parents[2]
ELECTIONS = 20
PRIORITIES = {1: "0", 2: "5", 3: "never"}


class Worker:
    def __init__(self, area: Path, host_id: int, priority: str, lines: queue.Queue[list[str]]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lease.priority_worker", "--path", str(area),
             "--host-id", str(host_id), "--priority", priority,
             "--hosts", str(len(PRIORITIES))],
            cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
        )
        self.reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self.reader.start()

    def _read(self, lines: queue.Queue[list[str]]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.put(line.split())
        lines.put(["EXIT", str(self.proc.pid)])

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def elections(area: Path) -> list[tuple[int, int]]:
    """Run the three workers; the (lver, host) of the first ELECTIONS + 1 terms."""
    lines: queue.Queue[list[str]] = queue.Queue()
    workers = [Worker(area, h, p, lines) for h, p in PRIORITIES.items()]
    won: list[tuple[int, int]] = []
    try:
        ready: set[int] = set()
        while len(ready) < len(workers):
            parts = lines.get(timeout=60)
            assert parts[0] != "EXIT", f"a worker exited before it was ready: {parts}"
            if parts[0] == "READY":
                ready.add(int(parts[1]))
        for w in workers:
            w.go()
        while len(won) < ELECTIONS + 1:
            parts = lines.get(timeout=60)
            assert parts[0] != "EXIT", f"a worker exited: {parts} after {won}"
            if parts[0] == "ACQ":
                won.append((int(parts[2]), int(parts[1])))
    finally:
        for w in workers:
            w.stop()
    return sorted(won)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_five_wins_free_elections_and_never_never_holds_the_role() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-priority-") as tmp:
        area = Path(tmp) / "area.img"
        await format_file(area, 16)
        won = await anyio.to_thread.run_sync(elections, area)
    lvers = [lver for lver, _ in won]
    assert lvers == list(range(lvers[0], lvers[0] + ELECTIONS + 1))  # one term per election
    hosts = [host for _, host in won]
    assert 3 not in hosts  # never
    assert hosts[0] == 2  # the free election of hosts that started together: the 5 host
    for before, after in zip(hosts, hosts[1:], strict=False):
        # a step-down of the 0 host: the 5 host wins; of the 5 host (held off): the 0 host
        assert after == (2 if before == 1 else 1), hosts
