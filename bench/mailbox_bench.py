"""Mailbox benchmark: round trips, SPM throughput and idle I/O on a shared O_DIRECT file.

    python -m bench.mailbox_bench [--quick]

One SPM process (no-op extend: the mailbox alone is measured) and host processes that each
simulate several hosts (their own HostMailbox and host id), all on one file under /var/tmp
opened with O_DIRECT, with the default ``[mailbox]`` settings (max_hosts 2000, 512 B
sectors). Scenarios (vdsm's own mailbox on this kind of machine: 0.51 s; 0.52/1.04 s;
0.71/1.27 s median/p99, 518 KB/s SPM idle reads):

- 1 host x 1 request, sequentially;
- 1 host x 63 requests at once;
- 50 hosts (2 processes) x 1 request at once;
- SPM throughput: 250 hosts (5 processes) x 4 requests at once;
- idle I/O of the SPM and of a host, measured from the storage's counters.

Writes bench/results/mailbox.json and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import anyio

from autoextend import logs
from autoextend.directio import DirectStorage, open_storage
from autoextend.lvm.authority import LocalAuthority
from autoextend.lvm.volume import ExtendResult, VolumeRef
from autoextend.spm.config import MailboxSettings, mailbox_base
from autoextend.spm.host import HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer

RESULT = Path(__file__).parent / "results" / "mailbox.json"
SETTINGS = MailboxSettings()  # the defaults are what is measured
VDSM = {
    "1x1": {"median_s": 0.511, "p99_s": 0.514},
    "1x63": {"median_s": 0.523, "p99_s": 1.035},
    "50x1": {"median_s": 0.705, "p99_s": 1.271},
    "spm_idle_read_bytes_per_s": 518_000,
}


class NoopBackend:
    """Answers every extend at once: the benchmark measures the mailbox alone."""

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        return ExtendResult(size, False)

    async def refresh(self, volume: VolumeRef) -> int:
        return 0

    async def size(self, volume: VolumeRef) -> int:
        return 0

    def lookup(self, path: str) -> VolumeRef | None:
        return None

    def device_path(self, volume: VolumeRef) -> str:
        return ""


def _layout(storage: DirectStorage) -> MailboxLayout:
    return MailboxLayout(mailbox_base(SETTINGS), storage.sector_size, SETTINGS.max_hosts)


def _io(storage: DirectStorage) -> dict[str, int]:
    return dataclasses.asdict(storage.stats)


async def _commands(handle: Any) -> None:
    """Read JSON commands from stdin (in a thread) and answer each on stdout."""
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        reply = await handle(json.loads(line))
        print(json.dumps(reply), flush=True)


async def spm_worker(meta: str) -> None:
    storage = await open_storage(meta, 512)
    server = SpmMailServer(storage, NoopBackend(), ["vg0"], layout=_layout(storage),
                           authority=LocalAuthority(), settings=SETTINGS)

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        return {"io": _io(storage), "counters": dataclasses.asdict(server.counters),
                "now": time.monotonic()}

    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        print(json.dumps({"ready": True}), flush=True)
        await _commands(handle)
        tg.cancel_scope.cancel()


async def host_worker(meta: str, first: int, count: int) -> None:
    storage = await open_storage(meta, 512)
    layout = _layout(storage)
    boxes = [HostMailbox(storage, layout, first + i, SETTINGS) for i in range(count)]

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "io":
            totals: dict[str, int] = {}
            for box in boxes:
                for key, value in dataclasses.asdict(box.counters).items():
                    totals[key] = totals.get(key, 0) + value
            return {"io": _io(storage), "now": time.monotonic(), "counters": totals}
        per_host = int(cmd["per_host"])
        latencies: list[float] = []
        start = time.monotonic()

        async def one(box: HostMailbox, n: int) -> None:
            began = time.monotonic()
            reply = await box.request(VolumeRef("vg0", f"lv{box.host_id}_{n}"),
                                      (1 + n + int(cmd["round"])) << 20)
            assert reply.status.name == "OK", reply
            latencies.append(time.monotonic() - began)

        async with anyio.create_task_group() as tg:
            for box in boxes:
                for n in range(per_host):
                    tg.start_soon(one, box, n)
        return {"latencies": latencies, "start": start, "end": time.monotonic()}

    async with anyio.create_task_group() as tg:
        for box in boxes:
            await tg.start(box.run)
        print(json.dumps({"ready": True}), flush=True)
        await _commands(handle)
        tg.cancel_scope.cancel()


class Worker:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.mailbox_bench", "--worker", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).parent.parent,
        )
        assert json.loads(self._read())["ready"]

    def _read(self) -> str:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"worker exited: {self.proc.wait()}")
        return line

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._read())
        return data

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.send(cmd)
        return self.receive()

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "median_s": round(statistics.median(values), 4),
        "p99_s": round(percentile(values, 0.99), 4),
        "max_s": round(max(values), 4),
    }


def rounds(workers: list[Worker], per_host: int, count: int) -> tuple[list[float], float]:
    """``count`` rounds where every worker sends at once; latencies and best throughput."""
    latencies: list[float] = []
    best = 0.0
    for r in range(count):
        for worker in workers:
            worker.send({"cmd": "round", "per_host": per_host, "round": r})
        answers = [worker.receive() for worker in workers]
        for answer in answers:
            latencies.extend(answer["latencies"])
        span = max(a["end"] for a in answers) - min(a["start"] for a in answers)
        best = max(best, sum(len(a["latencies"]) for a in answers) / span)
        time.sleep(0.05)
    return latencies, best


def idle_rate(worker: Worker, seconds: float) -> dict[str, float]:
    before = worker.ask({"cmd": "io"})
    time.sleep(seconds)
    after = worker.ask({"cmd": "io"})
    elapsed = after["now"] - before["now"]
    return {
        "read_bytes_per_s": round((after["io"]["read_bytes"] - before["io"]["read_bytes"])
                                  / elapsed),
        "write_bytes_per_s": round((after["io"]["write_bytes"] - before["io"]["write_bytes"])
                                   / elapsed),
        "reads_per_s": round((after["io"]["reads"] - before["io"]["reads"]) / elapsed, 1),
    }


def run(quick: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="autoextend-mailbox-bench-", dir="/var/tmp"))
    workers: list[Worker] = []
    try:
        meta = str(root / "meta")
        layout = MailboxLayout(mailbox_base(SETTINGS), 512, SETTINGS.max_hosts)
        with open(meta, "wb") as f:
            f.truncate(layout.end)
        spm = Worker(["spm", meta])
        workers.append(spm)
        one = Worker(["host", meta, "1", "1"])
        workers.append(one)
        n = 10 if quick else 40
        result: dict[str, Any] = {"settings": SETTINGS.model_dump(), "sector_size": 512,
                                  "vdsm": VDSM, "load_average_at_start": os.getloadavg()}
        result["1x1"] = summary(rounds([one], 1, n)[0])
        result["1x63"] = summary(rounds([one], 63, n // 4)[0])
        fifty = [Worker(["host", meta, str(10 + 25 * i), "25"]) for i in range(2)]
        workers += fifty
        result["50x1"] = summary(rounds(fifty, 1, n // 2)[0])
        many = [Worker(["host", meta, str(100 + 50 * i), "50"]) for i in range(5)]
        workers += many
        latencies, throughput = rounds(many, 4, 3 if quick else 5)
        result["throughput_250x4"] = {**summary(latencies),
                                      "requests_per_s": round(throughput)}
        time.sleep(0.5)
        idle_s = 3.0 if quick else 10.0
        result["idle"] = {
            "seconds": idle_s,
            "spm": idle_rate(spm, idle_s),
            "host": idle_rate(one, 1.0),
        }
        for key in ("1x1", "1x63", "50x1"):
            result[key]["vdsm_median_over_ours"] = round(
                VDSM[key]["median_s"] / result[key]["median_s"], 1)  # type: ignore[index]
        return result
    finally:
        for worker in workers:
            worker.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        logs.configure("warning", "json")
        kind, meta, *rest = args.worker
        if kind == "spm":
            anyio.run(spm_worker, meta)
        else:
            anyio.run(host_worker, meta, int(rest[0]), int(rest[1]))
        return
    result = run(args.quick)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    RESULT.write_text(text + "\n")
    print(text)
    os.sync()


if __name__ == "__main__":
    main()
