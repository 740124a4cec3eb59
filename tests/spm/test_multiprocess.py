"""Real processes on one shared O_DIRECT file: hosts send, an SPM serves, the SPM is killed.

Each "host" is its own process with its own HostMailbox; the SPM process serves them with the
``loop`` volume backend (sparse files) and records every extend it makes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from autoextend.lab.jsonlog import json_records
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.wire import Ring, encode_ring

AGENT = str(Path(__file__).with_name("mp_agent.py"))
MAX_HOSTS = 8
MiB = 1 << 20


@dataclass
class Rig:
    root: Path
    layout: MailboxLayout = field(default_factory=lambda: MailboxLayout(0, 512, MAX_HOSTS))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def meta(self) -> str:
        return str(self.root / "meta")

    @property
    def record(self) -> Path:
        return self.root / "extends.jsonl"

    @property
    def status(self) -> Path:
        return self.root / "spm-status.json"

    def volume(self, lv: str, size: int = MiB) -> None:
        path = self.root / "vols" / "vg0" / lv
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)

    def volume_size(self, lv: str) -> int:
        return (self.root / "vols" / "vg0" / lv).stat().st_size

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.root / log, "ab")  # noqa: SIM115 - closed when the rig is torn down
        proc = subprocess.Popen([sys.executable, AGENT, *args], stdout=out, stderr=out)
        out.close()
        self.procs.append(proc)
        return proc

    def spm(self, name: str = "spm") -> subprocess.Popen[bytes]:
        return self._spawn(["spm", self.meta, str(self.root / "vols"), str(self.record),
                            str(self.status), str(MAX_HOSTS)], f"{name}.log")

    def host(self, host_id: int, plan: list[list[Any]]) -> subprocess.Popen[bytes]:
        plan_path = self.root / f"plan-{host_id}.json"
        plan_path.write_text(json.dumps(plan))
        return self._spawn(["host", self.meta, str(host_id), str(MAX_HOSTS), str(plan_path),
                            str(self.result_path(host_id))], f"host-{host_id}.log")

    def result_path(self, host_id: int) -> Path:
        return self.root / f"result-{host_id}.json"

    def result(self, host_id: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.result_path(host_id).read_text())
        return data

    def records(self) -> list[dict[str, Any]]:
        return json_records(self.record)

    def counters(self) -> dict[str, int]:
        data: dict[str, int] = json.loads(self.status.read_text())
        return data

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))


@pytest.fixture
def rig() -> Iterator[Rig]:
    root = Path(tempfile.mkdtemp(prefix="autoextend-spm-", dir="/var/tmp"))
    rig = Rig(root)
    with open(rig.meta, "wb") as f:
        f.truncate(rig.layout.end)
    try:
        yield rig
    finally:
        for proc in rig.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def wait_for(cond: Any, timeout: float, rig: Rig, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{rig.logs()}")
        time.sleep(0.01)  # poll with a deadline (a sync test watching other processes)


def plan_for(host_id: int, volumes: int = 5, rounds: int = 8) -> list[list[Any]]:
    """Rounds of concurrent requests, one per volume, each round asking 1 MiB more."""
    return [["vg0", f"lv{host_id}_{k}", (2 + r) * MiB, r] for r in range(rounds)
            for k in range(volumes)]


def check_host_results(rig: Rig, host_id: int, plan: list[list[Any]]) -> None:
    results = rig.result(host_id)["results"]
    assert len(results) == len(plan), rig.logs()
    assert all(r["status"] == "OK" and r["size"] >= r["asked"] for r in results), results


@pytest.mark.slow
def test_hosts_and_spm_processes_spm_killed_mid_run(rig: Rig) -> None:
    host_ids = [1, 2, 3, 4]
    plans = {h: plan_for(h) for h in host_ids}
    for h in host_ids:
        for k in range(5):
            rig.volume(f"lv{h}_{k}")
    first = rig.spm("spm-1")
    hosts = [rig.host(h, plans[h]) for h in host_ids]
    total = sum(len(p) for p in plans.values())
    wait_for(lambda: len(rig.records()) >= total // 4, 60, rig, "the first SPM to serve")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_after = len(rig.records())
    assert killed_after < total, "the first SPM finished everything before it was killed"
    rig.spm("spm-2")
    for proc in hosts:
        assert proc.wait(timeout=120) == 0, rig.logs()
    for h in host_ids:
        check_host_results(rig, h, plans[h])
    # Nothing applied twice: each (volume, size) grew the volume at most once, and each
    # volume ends at exactly the largest size asked (never more).
    changed = [(r["volume"], r["size"]) for r in rig.records() if r["changed"]]
    assert len(changed) == len(set(changed))
    for h in host_ids:
        for k in range(5):
            assert rig.volume_size(f"lv{h}_{k}") == max(size for _, lv, size, _ in plans[h]
                                                          if lv == f"lv{h}_{k}")
    # Requests re-executed by the second SPM (served but not yet replied when the first one
    # died) were no-ops.
    assert len(rig.records()) - len(changed) <= 4 * 5


@pytest.mark.slow
def test_corrupt_mailboxes_are_counted_and_rejections_have_reasons(rig: Rig) -> None:
    rig.volume("lv1")
    spm = rig.spm()
    wait_for(rig.status.exists, 30, rig, "the SPM to start")
    # Garbage in host 5's request box, then ring for it so the SPM reads it now.
    layout = rig.layout
    fd = os.open(rig.meta, os.O_RDWR)
    try:
        os.pwrite(fd, os.urandom(layout.request_box_bytes), layout.request_offset(5))
        os.pwrite(fd, encode_ring(512, Ring(5, 1, 1, box_seq=1)), layout.ring_offset(5))
        os.fsync(fd)
    finally:
        os.close(fd)
    wait_for(lambda: rig.counters()["corrupt_sectors"] >= layout.request_sectors - 1, 30, rig,
             "the corrupt box to be counted")
    plan = [
        ["vg0", "lv1", 3 * MiB, 0],
        ["othervg", "lv1", 3 * MiB, 0],
        ["vg0", "-bad", 3 * MiB, 0],
        ["vg0", "lv1", 1 << 62, 0],
        ["vg0", "missing", 3 * MiB, 0],
    ]
    host = rig.host(2, plan)
    assert host.wait(timeout=60) == 0, rig.logs()
    by_volume = {(r["volume"], r["asked"]): r for r in rig.result(2)["results"]}
    assert by_volume[("vg0/lv1", 3 * MiB)]["status"] == "OK"
    assert by_volume[("othervg/lv1", 3 * MiB)]["reason"] == "VG_NOT_IN_POOL"
    assert by_volume[("vg0/-bad", 3 * MiB)]["reason"] == "BAD_NAME"
    assert by_volume[("vg0/lv1", 1 << 62)]["reason"] == "SIZE_TOO_LARGE"
    assert by_volume[("vg0/missing", 3 * MiB)]["reason"] == "NO_SUCH_VOLUME"
    assert all(r["status"] == "REJECTED" for k, r in by_volume.items()
               if k != ("vg0/lv1", 3 * MiB))
    assert spm.poll() is None, "the SPM died"
    wait_for(lambda: rig.counters()["rejected"] == 4, 10, rig, "counters")
    assert rig.volume_size("lv1") == 3 * MiB
