"""Every benchmark under bench/ still runs: each in its smallest run (``SMOKE_ARGS`` in
bench/run_all.py, seconds), its JSON written to a temporary folder. No figure is looked at:
this only keeps a benchmark from breaking silently (idle_bench once armed 0 of its 1,000
drives after a constructor changed, and nothing noticed).

``bench/chaos.py`` (``make chaos``, not in ``make bench``) runs too, in its smallest form: 2
hosts, 1 guest, 10 s (its least) of one cheap fault kind. The soak itself, at a size that
finds things, is tests/e2e/test_chaos.py; this covers the command around it (arguments, the
JSON and the one-page report). The other modules under bench/ without ``_bench`` in their name
are parts of a benchmark (floor, iocount, lease_figures, engine_figures, sanlock_peer) and
run with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import RESULTS_ENV
from bench.run_all import BENCHMARKS, SMOKE_ARGS, smoke_command

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted({bench[0] for bench in BENCHMARKS})


def test_every_benchmark_is_run_and_has_a_smoke_run() -> None:
    found = {f"bench.{p.stem}" for p in (ROOT / "bench").glob("*_bench.py")}
    assert found == set(MODULES) == set(SMOKE_ARGS)


# Benchmarks that use only CPU and private files run beside the unit tests (marker cpu); the
# others use QEMU, libvirtd, lvm2 or loop devices (the rig stage, one at a time).
CPU_ONLY = {"bench.mailbox_bench", "bench.spmidle_bench", "bench.lease_bench"}


def _param(bench: list[str]) -> object:
    marks = [pytest.mark.slow] + ([pytest.mark.cpu] if bench[0] in CPU_ONLY else [])
    return pytest.param(bench, marks=marks, id=" ".join(bench))


@pytest.mark.parametrize("bench", [_param(b) for b in BENCHMARKS])
def test_benchmark_runs(bench: list[str], tmp_path: Path) -> None:
    command = smoke_command(bench)
    env = dict(os.environ, **{RESULTS_ENV: str(tmp_path)})
    assert command[0] == sys.executable
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    written = list(tmp_path.glob("*.json"))
    if "--no-save" not in command:
        assert written, f"{' '.join(bench)} wrote no result under {tmp_path}"
    for path in written:
        json.loads(path.read_text())  # whole, parsable JSON


CHAOS_SMOKE = ["--duration", "10", "--hosts", "2", "--guests", "1", "--seed", "1",
               "--kinds", "reload"]


@pytest.mark.slow
def test_chaos_bench_runs(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.chaos", *CHAOS_SMOKE, "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "chaos-1.json").read_text())
    assert report["passed"] is True and report["config"]["seed"] == 1
    assert (tmp_path / "chaos-1.md").read_text().startswith("# Chaos soak, seed 1: PASSED")
