"""Mailbox benchmark: round trips, SPM throughput and idle I/O on a shared O_DIRECT file.

    python -m bench.mailbox_bench [--quick] [--runs N]

One SPM process (no-op extend: the mailbox alone is measured) and host processes that each
simulate several hosts (their own HostMailbox and host id), all on one file under /var/tmp
opened with O_DIRECT, with the default ``[mailbox]`` settings (max_hosts 250, 512 B
sectors). Scenarios, in this order (vdsm's own mailbox on this kind of machine: 0.51 s;
0.52/1.04 s; 0.71/1.27 s median/p99, 518 KB/s SPM idle reads):

- idle I/O of the SPM (250 hosts started, none has sent anything) and of a host, with no
  live set (every ring sector swept) and with 2, 50 and 250 of the 250 hosts live (the set
  the lease would pass in: their ring sectors on the live sweep, the others on the sweep);
- cold: 20 hosts that never sent anything and that the live set leaves out (a host the
  lease does not know yet) send one request each, one after the other at random moments
  (the SPM finds them with its ring sweep);
- cold live: the same for 20 quiet hosts in the live set (the live sweep finds them), with
  71 hosts live (every host running but the cold group above), then for 10 other quiet
  hosts with 11 hosts live (a small pool: the live sweep runs at every poll);
- 1 host x 1 request, sequentially;
- 1 host x 63 requests at once;
- 50 hosts (2 processes) x 1 request at once;
  (these three after one unmeasured round: they measure hosts in conversation with the SPM,
  i.e. on its fast path; the first request of an inactive host is the cold scenario above)
- SPM throughput: 250 hosts (5 processes) x 4 requests at once;
- SPM reads while quiet but with every host still in its hot window (just after that);
- idle I/O of an SPM configured for 2000 hosts (its own area).

Writes bench/results/mailbox.json (every run) and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
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
from autoextend.errors import VolumeError
from autoextend.spm.config import MailboxSettings, mailbox_base
from autoextend.spm.host import HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.spm.watch import cadence, idle_ring_read_rate
from autoextend.volumes import ExtendResult, LocalAuthority, VolumeRef
from bench import results_file

RESULT = results_file("mailbox.json")
LIVE_SETTLE_S = 1.5  # the SPM asks for the live set once a second
# The defaults are what is measured; AUTOEXTEND_BENCH_MAILBOX_SET (JSON, set from --set by
# the parent) overrides keys for experiments.
SETTINGS = MailboxSettings(**json.loads(os.environ.get("AUTOEXTEND_BENCH_MAILBOX_SET", "{}")))
VDSM: dict[str, Any] = {
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

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        raise VolumeError(f"{volume}: the benchmark's backend cannot reduce")

    async def metadata_size(self, volume: VolumeRef) -> int:
        """One view: the size is the metadata's."""
        return await self.size(volume)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return [self.device_path(volume)]


def _settings(max_hosts: int) -> MailboxSettings:
    return SETTINGS.model_copy(update={"max_hosts": max_hosts})


def _layout(storage: DirectStorage, settings: MailboxSettings) -> MailboxLayout:
    return MailboxLayout(mailbox_base(settings), storage.sector_size, settings.max_hosts)


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


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (getrusage: not in ticks)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def spm_worker(meta: str, max_hosts: int) -> None:
    settings = _settings(max_hosts)
    storage = await open_storage(meta, 512)
    live: set[int] = set()  # what the lease would report alive (set by the parent)
    # AUTOEXTEND_BENCH_PEEK=0: no ring peeker (the server reads on its own, as before it)
    server = SpmMailServer(storage, NoopBackend(), ["vg0"], layout=_layout(storage, settings),
                           authority=LocalAuthority(), settings=settings,
                           live_hosts=lambda: live,
                           peek=os.environ.get("AUTOEXTEND_BENCH_PEEK", "1") != "0")

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "live":
            live.clear()
            live.update(int(h) for h in cmd["hosts"])
        io = _io(storage)
        peek = server.peek_stats  # the peeker's reads are the SPM's reads too
        if peek is not None:
            io["reads"] += peek.reads
            io["read_bytes"] += peek.read_bytes
        return {"io": io, "counters": dataclasses.asdict(server.counters),
                "now": time.monotonic(), "cpu_s": cpu_s(),
                "peek": None if peek is None else dataclasses.asdict(peek)}

    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        print(json.dumps({"ready": True}), flush=True)
        await _commands(handle)
        tg.cancel_scope.cancel()


async def host_worker(meta: str, first: int, count: int) -> None:
    storage = await open_storage(meta, 512)
    layout = _layout(storage, SETTINGS)
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
        if cmd["cmd"] == "cold":  # each host once, one after the other, at random moments
            rng = random.Random(int(cmd["round"]))
            for box in boxes:
                await anyio.sleep(rng.uniform(0.0, 0.5))
                began = time.monotonic()
                reply = await box.request(VolumeRef("vg0", f"cold{box.host_id}"), 1 << 30)
                assert reply.status.name == "OK", reply
                latencies.append(time.monotonic() - began)
            return {"latencies": latencies, "start": start, "end": time.monotonic()}

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


def rounds(
    workers: list[Worker], per_host: int, count: int, warmup: int = 0
) -> tuple[list[float], float]:
    """``warmup`` unmeasured rounds, then ``count`` rounds where every worker sends at once;
    latencies and best throughput."""
    for r in range(warmup):
        for worker in workers:
            worker.send({"cmd": "round", "per_host": per_host, "round": 1000 + r})
        for worker in workers:
            worker.receive()
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


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_rate(worker: Worker, seconds: float) -> dict[str, float]:
    cpu0 = process_cpu_s(worker.proc.pid)
    before = worker.ask({"cmd": "io"})
    time.sleep(seconds)
    after = worker.ask({"cmd": "io"})
    cpu = process_cpu_s(worker.proc.pid) - cpu0
    if "cpu_s" in after:  # the worker's own getrusage: exact, not in 10 ms ticks
        cpu = after["cpu_s"] - before["cpu_s"]
    elapsed = after["now"] - before["now"]
    return {
        "cpu_percent_of_core": round(100 * cpu / elapsed, 2),
        "read_bytes_per_s": round((after["io"]["read_bytes"] - before["io"]["read_bytes"])
                                  / elapsed),
        "write_bytes_per_s": round((after["io"]["write_bytes"] - before["io"]["write_bytes"])
                                   / elapsed),
        "reads_per_s": round((after["io"]["reads"] - before["io"]["reads"]) / elapsed, 1),
    }


def _fresh_area(root: Path, name: str, max_hosts: int) -> str:
    settings = _settings(max_hosts)
    meta = str(root / name)
    with open(meta, "wb") as f:
        f.truncate(MailboxLayout(mailbox_base(settings), 512, max_hosts).end)
    return meta


def _vs_vdsm(result: dict[str, Any]) -> None:
    for key in ("1x1", "1x63", "50x1"):
        result[key]["vdsm_median_over_ours"] = round(
            VDSM[key]["median_s"] / result[key]["median_s"], 1)
        result[key]["vdsm_p99_over_ours"] = round(
            VDSM[key]["p99_s"] / result[key]["p99_s"], 1)
    for key in ("cold_1x1", "cold_live_1x1", "cold_live_small_1x1"):
        result[key]["vdsm_1x1_median_over_ours"] = round(
            VDSM["1x1"]["median_s"] / result[key]["median_s"], 1)
    for entry in result["idle_live_250"].values():
        entry["vdsm_over_ours"] = round(
            VDSM["spm_idle_read_bytes_per_s"] / max(entry["spm"]["read_bytes_per_s"], 1), 1)
    idle = result["idle_250"]["spm"]["read_bytes_per_s"]
    result["idle_250"]["vdsm_over_ours"] = round(
        VDSM["spm_idle_read_bytes_per_s"] / max(idle, 1), 1)


def run(quick: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="autoextend-mailbox-bench-", dir="/var/tmp"))
    workers: list[Worker] = []
    try:
        max_hosts = SETTINGS.max_hosts
        meta = _fresh_area(root, "meta", max_hosts)
        result: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
        spm = Worker(["spm", meta, str(max_hosts)])
        workers.append(spm)
        one = Worker(["host", meta, "1", "1"])
        fifty = [Worker(["host", meta, str(10 + 25 * i), "25"]) for i in range(2)]
        n_cold = "20" if not quick else "10"
        cold = Worker(["host", meta, "200", n_cold])
        cold_live = Worker(["host", meta, "220", n_cold])
        cold_small = Worker(["host", meta, "240", "10"])
        workers += [one, *fifty, cold, cold_live, cold_small]
        time.sleep(1.0)  # every host's start ring seen by a sweep
        idle_s = 3.0 if quick else 10.0
        result["idle_250"] = {"seconds": idle_s, "live_hosts": 0,
                              "spm": idle_rate(spm, idle_s), "host": idle_rate(one, 2.0)}
        result["idle_live_250"] = {}
        for n_live in (2, 50, 250):
            live = list(range(1, n_live + 1))
            spm.ask({"cmd": "live", "hosts": live})
            time.sleep(LIVE_SETTLE_S)  # the server asks for the live set once a second
            seconds = idle_s / 2
            result["idle_live_250"][str(n_live)] = {
                "seconds": seconds, "live_hosts": n_live, "spm": idle_rate(spm, seconds),
                "expected_read_bytes_per_s": round(
                    idle_ring_read_rate(live, max_hosts, 512, SETTINGS)
                    + max_hosts * 8192 / SETTINGS.full_scan_interval_s),
            }
        # Every host that runs is live, but the first cold group: hosts the lease does not
        # know yet.
        live = [1, *range(10, 60), *range(220, 240)]
        spm.ask({"cmd": "live", "hosts": live})
        time.sleep(LIVE_SETTLE_S)
        cold.send({"cmd": "cold", "per_host": 1, "round": 1})
        result["cold_1x1"] = {**summary(cold.receive()["latencies"]), "live_hosts": len(live)}
        cold_live.send({"cmd": "cold", "per_host": 1, "round": 2})
        result["cold_live_1x1"] = {**summary(cold_live.receive()["latencies"]),
                                   "live_hosts": len(live)}
        small = [1, *range(240, 250)]
        spm.ask({"cmd": "live", "hosts": small})
        time.sleep(LIVE_SETTLE_S)
        cold_small.send({"cmd": "cold", "per_host": 1, "round": 3})
        result["cold_live_small_1x1"] = {**summary(cold_small.receive()["latencies"]),
                                         "live_hosts": len(small)}
        spm.ask({"cmd": "live", "hosts": [*live, *range(240, 250)]})
        n = 10 if quick else 40
        result["1x1"] = summary(rounds([one], 1, n, warmup=1)[0])
        result["1x63"] = summary(rounds([one], 63, n // 4)[0])
        result["50x1"] = summary(rounds(fifty, 1, n // 2, warmup=1)[0])
        for worker in [one, *fifty, cold, cold_live, cold_small]:
            worker.stop()
            workers.remove(worker)
        many = [Worker(["host", meta, str(1 + 50 * i), "50"]) for i in range(5)]
        workers += many
        spm.ask({"cmd": "live", "hosts": list(range(1, max_hosts + 1))})
        time.sleep(1.0)
        latencies, throughput = rounds(many, 4, 3 if quick else 5)
        result["throughput_250x4"] = {**summary(latencies),
                                      "requests_per_s": round(throughput)}
        time.sleep(0.5)
        result["quiet_hot_250"] = {"seconds": 3.0, "spm": idle_rate(spm, 3.0)}
        for worker in [spm, *many]:
            worker.stop()
            workers.remove(worker)
        big = Worker(["spm", _fresh_area(root, "meta2000", 2000), "2000"])
        workers.append(big)
        time.sleep(1.0)
        # A whole number of sweeps (about 3.9 s each at 2000 hosts) in the window.
        sweep = cadence(2000 * 512, SETTINGS.ring_sweep_bytes_per_s, SETTINGS.poll_interval_s)
        window = max(idle_s, 4 * (sweep + SETTINGS.poll_interval_s))
        result["idle_2000"] = {"seconds": round(window, 2), "spm": idle_rate(big, window)}
        result["load_average_at_end"] = os.getloadavg()
        _vs_vdsm(result)
        return result
    finally:
        for worker in workers:
            worker.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--runs", type=int, default=2, help="complete runs (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [mailbox] setting (JSON value), for experiments")
    parser.add_argument("--no-save", action="store_true", help="print only, keep the JSON file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        logs.configure("warning", "json")
        kind, meta, *rest = args.worker
        if kind == "spm":
            anyio.run(spm_worker, meta, int(rest[0]))
        else:
            anyio.run(host_worker, meta, int(rest[0]), int(rest[1]))
        return
    if args.set:
        overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        os.environ["AUTOEXTEND_BENCH_MAILBOX_SET"] = json.dumps(overrides)
        global SETTINGS
        SETTINGS = MailboxSettings(**overrides)
    runs = []
    for _ in range(args.runs):
        runs.append(run(args.quick))
        time.sleep(2.0)
    result = {"settings": SETTINGS.model_dump(), "sector_size": 512, "vdsm": VDSM,
              "runs": runs}
    text = json.dumps(result, indent=2)
    if not args.no_save:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text + "\n")
    print(text)
    os.sync()


if __name__ == "__main__":
    main()
