"""SPM idle cost and cold first requests (issue 32, items 2 and 3).

    python -m bench.spmidle_bench [--runs 3] [--window S] [--quick] [--no-peek] [--set K=V]

One SPM process (``bench.mailbox_bench``'s worker: no-op extend, 250 hosts, 512 B sectors,
one O_DIRECT file under /var/tmp) and 250 hosts in 5 processes, all started (their ring
sectors written) and then quiet. Per run:

- idle: the SPM's CPU (getrusage of its process: user + system, every thread, so the ring
  peeker's too) and its reads (the server's and the peeker's) over ``--window`` seconds,
  with no live set and with 2, 50 and 250 of the 250 hosts live;
- cold: the first request of a host that never sent anything (the SPM has no trace of it
  on its fast path), one host after the other at random moments (0-0.5 s apart), timed from
  ``request()`` to the reply: hosts of a small live set (11 live: 4 rounds of 10 hosts, a new
  set each round), hosts of a 50-host live set (20 hosts), hosts outside the live set (20).

Each figure gets min / median / max over the runs; the cold latencies also pooled over the
runs. The load average is recorded at each run's start and end: on a shared machine the
figures are as measured under that load. ``--no-peek`` runs the server without its ring
peeker (the previous behaviour) for comparison. Writes bench/results/spmidle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from autoextend.spm.config import MailboxSettings
from autoextend.spm.watch import idle_ring_read_rate
from bench import results_file
from bench.mailbox_bench import LIVE_SETTLE_S, Worker, _fresh_area, idle_rate, summary

RESULT = results_file("spmidle.json")
MAX_HOSTS = 250
LIVE_CASES = (0, 2, 50, 250)
AIMS = {"cpu_percent_of_core": 0.4, "read_bytes_per_s": 518_000, "cold_live_p99_s": 0.060}


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _cold_group(spm: Worker, workers: list[Worker], meta: str, first: int, count: int,
                live: list[int], rnd: int) -> list[float]:
    """The first-request latencies of hosts ``first``.. (``count`` of them, a worker of
    their own, one request each, one after the other) with ``live`` the SPM's live set."""
    group = Worker(["host", meta, str(first), str(count)])
    workers.append(group)
    spm.ask({"cmd": "live", "hosts": live})
    time.sleep(LIVE_SETTLE_S)
    group.send({"cmd": "cold", "per_host": 1, "round": rnd})
    latencies: list[float] = group.receive()["latencies"]
    group.stop()
    workers.remove(group)
    return latencies


def one_run(root: Path, settings: MailboxSettings, window: float, quick: bool) -> dict[str, Any]:
    meta = _fresh_area(root, f"meta{time.monotonic_ns()}", MAX_HOSTS)
    workers: list[Worker] = []
    result: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    try:
        spm = Worker(["spm", meta, str(MAX_HOSTS)])
        workers.append(spm)
        hosts = [Worker(["host", meta, str(1 + 50 * i), "50"]) for i in range(5)]
        workers += hosts
        time.sleep(1.0)
        idle: dict[str, Any] = {}
        for n_live in LIVE_CASES:
            live = list(range(1, n_live + 1))
            spm.ask({"cmd": "live", "hosts": live})
            time.sleep(LIVE_SETTLE_S)
            before = spm.ask({"cmd": "io"})["counters"]
            rate: dict[str, Any] = dict(idle_rate(spm, window))
            after = spm.ask({"cmd": "io"})["counters"]
            rate["server"] = {k: after[k] - before[k] for k in
                              ("polls", "sweeps", "live_polls", "hot_polls", "peek_nudges")}
            rate["expected_read_bytes_per_s"] = round(
                idle_ring_read_rate(live, MAX_HOSTS, 512, settings,
                                    peeking=os.environ["AUTOEXTEND_BENCH_PEEK"] != "0")
                + MAX_HOSTS * 8192 / settings.full_scan_interval_s)
            idle[str(n_live)] = rate
        result["idle"] = idle
        for worker in hosts:
            worker.stop()
            workers.remove(worker)
        # Cold groups: workers of their own (a worker's "cold" command sends one request
        # from each of its hosts, one after the other).
        n = 5 if quick else 10
        small_rounds = 1 if quick else 4
        cold: dict[str, list[float]] = {"live_11": [], "live_50": [], "not_live": []}
        for r in range(small_rounds):  # hosts 100.. (10 per round), 1 other host live
            first = 100 + 10 * r
            cold["live_11"] += _cold_group(spm, workers, meta, first, n,
                                           [1, *range(first, first + n)], r)
        cold["live_50"] = _cold_group(spm, workers, meta, 150, 2 * n, list(range(150, 200)),
                                      10)
        cold["not_live"] = _cold_group(spm, workers, meta, 200, 2 * n, list(range(1, 51)), 11)
        result["cold_latencies_s"] = {k: [round(v, 4) for v in vs] for k, vs in cold.items()}
        result["cold"] = {k: summary(vs) for k, vs in cold.items()}
        result["spm_counters"] = spm.ask({"cmd": "io"})["counters"]
        result["load_average_at_end"] = os.getloadavg()
        return result
    finally:
        for worker in workers:
            worker.stop()


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """min / median / max over the runs of every figure; cold latencies pooled too."""
    out: dict[str, Any] = {"idle": {}, "cold": {}}
    for case in map(str, LIVE_CASES):
        out["idle"][case] = {
            key: _spread([r["idle"][case][key] for r in runs])
            for key in ("cpu_percent_of_core", "read_bytes_per_s", "reads_per_s")
        }
    for kind in runs[0]["cold"]:
        pooled = [v for r in runs for v in r["cold_latencies_s"][kind]]
        out["cold"][kind] = {
            "median_s": _spread([r["cold"][kind]["median_s"] for r in runs]),
            "p99_s": _spread([r["cold"][kind]["p99_s"] for r in runs]),
            "pooled": summary(pooled),
        }
    worst_cpu = max(out["idle"][c]["cpu_percent_of_core"]["max"] for c in out["idle"])
    worst_reads = max(out["idle"][c]["read_bytes_per_s"]["max"] for c in out["idle"])
    out["aims_met_in_every_run"] = {
        "cpu": worst_cpu <= AIMS["cpu_percent_of_core"],
        "reads": worst_reads <= AIMS["read_bytes_per_s"],
        "cold_live_11_p99": out["cold"]["live_11"]["p99_s"]["max"] <= AIMS["cold_live_p99_s"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=3, help="complete runs (default 3)")
    parser.add_argument("--window", type=float, default=20.0,
                        help="seconds measured per idle case (default 20)")
    parser.add_argument("--quick", action="store_true", help="fewer cold hosts")
    parser.add_argument("--no-peek", action="store_true",
                        help="run the SPM without its ring peeker (the previous behaviour)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [mailbox] setting (JSON value), for experiments")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    if args.runs < 1 or args.window <= 0:
        parser.error("--runs must be >= 1 and --window > 0")
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    settings = MailboxSettings(**overrides)
    os.environ["AUTOEXTEND_BENCH_MAILBOX_SET"] = json.dumps(overrides)
    os.environ["AUTOEXTEND_BENCH_PEEK"] = "0" if args.no_peek else "1"
    root = Path(tempfile.mkdtemp(prefix="autoextend-spmidle-bench-", dir="/var/tmp"))
    try:
        runs = [one_run(root, settings, args.window, args.quick) for _ in range(args.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"settings": settings.model_dump(), "peek": not args.no_peek,
              "window_s": args.window, "aims": AIMS, "summary": aggregate(runs), "runs": runs}
    text = json.dumps(result, indent=2)
    if not args.no_save:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
