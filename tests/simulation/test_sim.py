"""The deterministic simulation (sim/): the real lease, mailbox and SPM server on a simulated
clock, disk and hosts, under seeded faults.

- a fixed set of seeds covering more than 10**6 simulated seconds holds every invariant,
  among them the views' (sim/views.py: no guest reads through a view smaller than what any
  guest wrote, across VM moves, live migrations, agent restarts and reboots);
- the same seed gives the same trace, byte for byte;
- with one safety check of the real code disabled (``Checks`` injected into the world's hosts), the simulation finds
  a violation within the CI budget and prints the command that replays it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import pytest

from autoextend.checks import ALL_ON, Checks
from autoextend.lease.service import LeaseService, SpmTerm
from autoextend.spm.host import HostMailbox
from sim.config import MUTATIONS, SimConfig
from sim.run import Result, run_world
from sim.world import mutant_checks

from .figures import FIGURES

# Pure Python, but about two minutes of CPU: part of `make test`, not of `make unit`. `make
# test` runs it beside the unit tests (cpu) with `--dist loadfile`, which keeps this module on
# one xdist worker: the seeds' process pool (the module fixture below) starts once, and the
# figures test below sees every seed's result.
pytestmark = [pytest.mark.slow, pytest.mark.cpu]

# 10 seeds x (98,560 s of faults + the quiet tail) > 10**6 simulated seconds.
CI_SEEDS = range(1, 11)
CI_DURATION = 98_560.0
_totals: dict[str, float] = {}


def _account(result: Result) -> None:
    s = result.stats
    for key, value in (("sim_s", result.sim_seconds), ("real_s", result.real_seconds),
                       ("requests", s.requests), ("faults", sum(s.faults.values())),
                       ("checks", s.checks), ("terms", s.terms), ("changes", s.changes),
                       ("reduces", s.reduces), ("reduced", s.reduced),
                       ("reduce_refused", s.reduce_refused), ("vm_starts", s.vm_starts),
                       ("stale_starts", s.stale_starts), ("migrations", s.migrations),
                       ("guest_reads", s.guest_reads), ("restart_behind", s.restart_behind),
                       ("write_failures", s.write_failures), ("seeds", 1)):
        _totals[key] = _totals.get(key, 0) + value


@pytest.fixture(scope="module")
def ci_runs() -> Iterator[dict[int, Future[Result]]]:
    """The CI seeds, run in two worker processes (pure CPU: a second core halves their wall
    time; the worlds are deterministic, so where one runs does not matter). Each seed's test
    waits for its own; seeds not asked for by then are cancelled."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no fork of pytest
    pool = ProcessPoolExecutor(max_workers=2, mp_context=context)
    try:
        yield {seed: pool.submit(run_world, SimConfig(seed=seed, duration=CI_DURATION))
               for seed in CI_SEEDS}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# A seed's test waits for its world in the shared pool, behind the seeds before it: beside the
# rest of stage one (and a CPU hog), that wait can pass the suite's 300 s default.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", CI_SEEDS)
def test_seed_holds_every_invariant(seed: int, ci_runs: dict[int, Future[Result]]) -> None:
    result = ci_runs[seed].result()
    _account(result)
    print(result.summary())
    assert result.ok, result.report()
    assert result.stats.terms >= 2 and result.stats.changes > 0
    assert result.stats.reduced > 0 and result.stats.reduce_refused > 0  # both verdicts
    assert sum(result.stats.faults.values()) > 100
    # The views were exercised: VMs started on stale views (the appearance check refreshed
    # them), migrated, and their guests read through every view they ran on.
    assert result.stats.stale_starts > 0 and result.stats.migrations > 0
    assert result.stats.guest_reads > 1000 and result.stats.faults.get("reboot", 0) > 0


def test_ci_seeds_cover_a_million_simulated_seconds() -> None:
    """Runs after the seeds above (same module, in order) and reports their figures."""
    if _totals.get("seeds", 0) < len(CI_SEEDS):
        pytest.skip("the seed tests did not all run (selected with -k?)")
    t = _totals
    line = (f"{t['seeds']:.0f} seeds: {t['sim_s']:.0f} simulated seconds in {t['real_s']:.1f} s "
            f"({t['sim_s'] / t['real_s']:.0f} sim s per real s), {t['requests']:.0f} requests, "
            f"{t['faults']:.0f} faults injected, {t['terms']:.0f} SPM terms, "
            f"{t['changes']:.0f} volume changes, {t['reduces']:.0f} reduces ({t['reduced']:.0f} "
            f"applied, {t['reduce_refused']:.0f} refused), {t['vm_starts']:.0f} VM starts "
            f"({t['stale_starts']:.0f} on a stale view), {t['migrations']:.0f} migrations, "
            f"{t['guest_reads']:.0f} guest reads checked ({t['write_failures']:.0f} writes past "
            f"a view's end; {t['restart_behind']:.0f} guests a restarted agent found on a view "
            f"below the metadata), {t['checks']:.0f} invariant checks, "
            f"0 violations")
    FIGURES.append(line)
    print(line)
    assert t["sim_s"] >= 1e6


def test_same_seed_same_trace() -> None:
    cfg = SimConfig(seed=4242, duration=20_000.0)
    first, second = run_world(cfg), run_world(cfg)
    assert first.ok and second.ok
    assert first.lines == second.lines > 1000
    assert first.digest == second.digest
    assert first.tail == second.tail
    assert run_world(SimConfig(seed=4243, duration=20_000.0)).digest != first.digest


@pytest.mark.timeout(900)  # up to 500,000 simulated seconds, beside the rest of stage one
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_mutation_is_caught(mutation: str) -> None:
    """With one safety check disabled, some seed of a small budget breaks an invariant."""
    budget = 500_000.0
    spent = 0.0
    for seed in range(1, 100):
        cfg = SimConfig(seed=seed, duration=50_000.0, mutation=mutation)
        result = run_world(cfg)
        spent += result.sim_seconds
        if not result.ok:
            report = result.report(tail=15)
            print(report)
            FIGURES.append(f"mutation {mutation}: caught by seed {seed} after {spent:.0f} "
                           f"simulated seconds (seeds 1..{seed}, {result.sim_seconds:.0f} s in "
                           f"the failing one): {result.violation}; replay: {cfg.command()}")
            assert cfg.command() in report
            replay = run_world(cfg)  # the printed seed replays the same failure, byte for byte
            assert (replay.violation, replay.digest) == (result.violation, result.digest)
            break
        assert spent < budget, f"mutation {mutation} not caught in {spent:.0f} simulated s"
    else:
        pytest.fail(f"mutation {mutation} not caught")
    # The mutant lived in that world's hosts only: nothing process-wide was switched.
    field = MUTATIONS[mutation]
    off = {} if field is None else {field: False}  # None: the server's reduce checks
    assert mutant_checks(mutation) == dataclasses.replace(ALL_ON, **off)
    assert mutant_checks(None) == ALL_ON == Checks()


# The views' mutants are caught fast (a VM starts or arrives on a stale view within a few
# thousand simulated seconds): every CI seed must catch them, not just one lucky seed.
VIEW_MUTANTS = ("view-check", "protect-views")
VIEW_MUTANT_BUDGET = 20_000.0  # simulated seconds per seed (the worlds stop at the violation)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mutation", VIEW_MUTANTS)
def test_view_mutant_is_caught_by_every_ci_seed(mutation: str) -> None:
    caught: list[float] = []
    for seed in CI_SEEDS:
        cfg = SimConfig(seed=seed, duration=VIEW_MUTANT_BUDGET, mutation=mutation)
        result = run_world(cfg)
        assert not result.ok, f"mutation {mutation} not caught by seed {seed}: {cfg.command()}"
        assert result.violation is not None
        assert "reads zeros where data is" in result.violation, result.report(tail=15)
        report = result.report(tail=5)
        assert f"VIOLATION: {result.violation}" in report and cfg.command() in report
        caught.append(result.sim_seconds)
    FIGURES.append(f"mutation {mutation}: caught by each of seeds {CI_SEEDS.start}.."
                   f"{CI_SEEDS.stop - 1}, after {min(caught):.0f} to {max(caught):.0f} "
                   f"simulated seconds")


def test_a_mutant_world_builds_its_hosts_with_one_check_off() -> None:
    """Each mutation turns off exactly one field of the injected ``Checks``, in the world's
    own hosts (given at construction); the product classes carry no switch."""
    fields = {f.name for f in dataclasses.fields(Checks)}
    assert {f for f in MUTATIONS.values() if f is not None} <= fields
    for name, field in MUTATIONS.items():
        checks = mutant_checks(name)
        # reduce-idempotency is given to the SPM server as its reduce checks (sim/reduces.py)
        assert [f for f in fields if not getattr(checks, f)] == ([] if field is None else [field])
    with pytest.raises(ValueError, match="unknown mutation"):
        mutant_checks("no-such")
    for cls in (LeaseService, SpmTerm, HostMailbox):
        assert not any(isinstance(v, bool) for k, v in vars(cls).items() if k.startswith("_")
                       and not k.startswith("__")), cls


def test_cli_prints_the_trace_and_the_replay_command_of_a_failing_seed() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "sim", "--seed", "1", "--duration", "50000",
           "--mutation", "generation", "--tail", "5"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "VIOLATION: h" in out and "acted on a reply not meant for it" in out
    assert "trace tail (5 of" in out
    assert ("replay: python -m sim --seed 1 --hosts 3 --duration 50000 --mutation generation"
            in out)
    ok = subprocess.run([sys.executable, "-m", "sim", "--seed", "2", "--duration", "2000"],
                        cwd=root, capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0 and "1 seeds, " in ok.stdout and "0 failed" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "sim", "--duration", "0"],
                         cwd=root, capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
