"""``make bench``: every benchmark, one after the other, each in its own process.

Each writes its JSON under ``bench/results/``. On a shared machine, run each under the
shared lock instead (``flock /tmp/ae-heavy.lock python -m bench.<name>``).

    python -m bench.run_all [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS: list[list[str]] = [
    ["bench.local_bench", "--part", "floor"],
    # One process per part: libvirtaio registers on one asyncio loop per process, and the
    # libvirt and pauses parts each run their own loop.
    ["bench.local_bench", "--part", "libvirt"],
    ["bench.local_bench", "--part", "pauses"],
    ["bench.local_bench", "--part", "extender"],
    ["bench.writerate_bench"],
    ["bench.idle_bench", "--window", "65"],
    ["bench.mailbox_bench", "--runs", "1"],
    ["bench.spmidle_bench"],
    ["bench.pool_bench"],
    ["bench.lvm_bench"],
    ["bench.lease_bench"],
]
QUICK_FLAG = {"bench.local_bench", "bench.writerate_bench", "bench.mailbox_bench",
              "bench.spmidle_bench",
              "bench.pool_bench", "bench.lease_bench"}
# The smallest run each benchmark offers, for ``--smoke`` and tests/ops/test_benches.py:
# seconds each, figures not looked at; only that every benchmark still runs to its end.
SMOKE_ARGS: dict[str, list[str]] = {
    "bench.local_bench": ["--smoke"],
    "bench.writerate_bench": ["--quick"],
    "bench.idle_bench": ["--vms", "2", "--drives", "2", "--window", "1", "--warmup", "0"],
    "bench.mailbox_bench": ["--quick", "--runs", "1", "--no-save"],
    "bench.spmidle_bench": ["--quick", "--runs", "1", "--window", "1", "--no-save"],
    "bench.pool_bench": ["--quick"],
    "bench.lvm_bench": ["--lvs", "4", "--extends", "4", "--parallel-runs", "1",
                        "--parallel-extends", "4"],
    "bench.lease_bench": ["--quick"],
}


def smoke_command(bench: list[str]) -> list[str]:
    """``bench`` (module and its arguments) in its smallest run; ``--window`` and ``--runs``
    given in BENCHMARKS are dropped for the smoke values."""
    module, args = bench[0], list(bench[1:])
    for flag in ("--window", "--runs"):
        if flag in args:
            i = args.index(flag)
            del args[i : i + 2]
    return [sys.executable, "-m", module, *args, *SMOKE_ARGS[module]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs where offered")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run of each (seconds; set AUTOEXTEND_BENCH_RESULTS "
                             "to keep bench/results/ as it is)")
    args = parser.parse_args()
    failed = []
    for bench in BENCHMARKS:
        command = [sys.executable, "-m", *bench]
        if args.smoke:
            command = smoke_command(bench)
        elif args.quick and bench[0] in QUICK_FLAG:
            command.append("--quick")
        print("==>", " ".join(command[2:]), flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(" ".join(bench))
    for name in failed:
        print("FAILED:", name, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
